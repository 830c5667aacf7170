"""`start` and `stop`: the steps between a configured directory and a running endpoint.

start: load the config, take the lock, run `endpoint_setup`, build the engine, register,
(detach), run, and on the way out run `endpoint_teardown` and drop the lock. Every step that can
fail does so before `--detach`, so its error reaches the terminal. The CLI supplies a
`Notifier` so that this module never prints.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import globus_sdk

from endpoint import daemon, hooks, logs, service, templating
from endpoint.auth import LoginPrompt, identity_client
from endpoint.config import EndpointConfig, ManagerConfig, load_endpoint_dir
from endpoint.engines import Engine, build_engine
from endpoint.errors import (
    AlreadyRunning,
    AuthError,
    ConfigError,
    LifecycleError,
    ServiceError,
    ServiceUnreachable,
)
from endpoint.identity import Authorizer, MappingAuthorizer, MappingFile, OwnerAuthorizer
from endpoint.lifecycle import (
    PidLock,
    Probe,
    State,
    clean_stale_pid,
    probe,
    read_endpoint_id,
    read_pid,
    resolve,
    user_dir,
    write_endpoint_id,
)
from endpoint.manager import Manager, ManagerSettings, ensure_supported
from endpoint.runtime import EndpointRuntime, QueueInfo

log = logging.getLogger(__name__)

DEFAULT_LOG = "endpoint.log"

#: Default time `stop` gives the endpoint to drain (runtime: 30 s), tear down (20 s) and exit.
STOP_GRACE_S = 60.0


class Notifier(Protocol):
    """What `start` tells the person at the terminal (implemented by the CLI)."""

    def cleaned_stale(self, ep_dir: Path, pid: int | None) -> None: ...
    def registered(self, name: str, endpoint_id: str) -> None: ...
    def login_prompt(self) -> LoginPrompt | None: ...


@dataclass(frozen=True)
class Loaded:
    name: str
    ep_dir: Path
    config: EndpointConfig | ManagerConfig
    text: str
    path: Path

    @property
    def log_path(self) -> Path:
        """`paths.endpoint_log` (the loader resolves it), else `<ep_dir>/endpoint.log`."""
        if isinstance(self.config, EndpointConfig) and self.config.paths.endpoint_log:
            return self.config.paths.endpoint_log
        return self.ep_dir / DEFAULT_LOG

    @property
    def user_config(self) -> EndpointConfig:
        assert isinstance(self.config, EndpointConfig)
        return self.config


def load(target: str | None) -> Loaded:
    """Resolve NAME_OR_UUID and load its config: a user endpoint's or a manager's."""
    ep_dir = resolve(target)
    cfg, text, path = load_endpoint_dir(ep_dir)
    return Loaded(ep_dir.name, ep_dir, cfg, text, path)


def _already_running(ep_dir: Path, found: Probe) -> AlreadyRunning:
    if found.state is State.RUNNING:
        return AlreadyRunning(
            f"endpoint {ep_dir.name} is already running (pid {found.pid}); stop it first"
        )
    return AlreadyRunning(
        f"endpoint {ep_dir.name} (pid {found.pid}) holds its lock but has not touched "
        f"{ep_dir / 'daemon.pid'} for {found.age:.0f}s (hung?); run: compute-endpoint stop "
        f"{ep_dir.name}"
    )


def claim(ep_dir: Path, notify: Notifier) -> PidLock:
    """Take the endpoint lock, cleaning a pid file left by a crash or a reboot."""
    found = probe(ep_dir)
    if found.locked:
        raise _already_running(ep_dir, found)
    if found.stale_file and clean_stale_pid(ep_dir):
        notify.cleaned_stale(ep_dir, found.pid)
    lock = PidLock.acquire(ep_dir)
    lock.start_touching()
    return lock


def service_for(cfg: Any, prompt: LoginPrompt | None) -> service.ComputeService:
    env = service.environment_name(
        getattr(cfg, "environment", None), bool(getattr(cfg, "local_compute_services", False))
    )
    app = service.build_app(user_dir(), env, login_flow_manager=prompt)
    identity_client(app)
    return service.ComputeService(app, service.service_url(env))


def register(
    loaded: Loaded,
    endpoint_uuid: str | None,
    notify: Notifier,
    extra_metadata: dict[str, Any] | None = None,
) -> service.Registration:
    svc = service_for(loaded.config, notify.login_prompt())
    svc.version_check()
    known_id = endpoint_uuid or read_endpoint_id(loaded.ep_dir)
    if extra_metadata is None:
        body = service.registration_body(loaded.name, loaded.text, loaded.config)
    else:
        body = service.registration_body(loaded.name, loaded.text, loaded.config, mode="manager")
        body["metadata"].update(extra_metadata)
        if is_privileged():
            body["multi_user"] = True
    reg = svc.register(known_id, body)
    write_endpoint_id(loaded.ep_dir, reg.endpoint_id)
    log.info("registered endpoint %s with %s", reg.endpoint_id, svc.base_url)
    notify.registered(loaded.name, reg.endpoint_id)
    return reg


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Until the runtime installs its handlers, SIGTERM unwinds like Ctrl-C, so a `stop`
    during setup or registration still runs teardown and removes the pid file."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Started:
    """How `start` ended in this process."""

    endpoint_id: str | None = None
    #: set in the original process of `--detach`: the daemon's pid
    daemon_pid: int | None = None
    log_path: Path | None = None


@dataclass
class _Run:
    loaded: Loaded
    lock: PidLock
    setup_done: bool = False
    owner: bool = True  # False in the original process once the daemon holds the lock
    endpoint_id: str | None = None
    engine: Engine | None = field(default=None, repr=False)
    authorizer: Authorizer | None = field(default=None, repr=False)


def start(
    target: str | None,
    *,
    notify: Notifier,
    endpoint_uuid: str | None = None,
    detach: bool = False,
    debug: bool = False,
) -> Started:
    os.umask(0o077)
    loaded = load(target)
    logs.configure(debug=debug, log_file=loaded.log_path, console=True)
    log.info("========== endpoint %s starting (%s)", loaded.name, loaded.path)
    run = _Run(loaded, claim(loaded.ep_dir, notify))
    try:
        with _interruptible():
            if isinstance(loaded.config, ManagerConfig):
                reg = _prepare_manager(run, endpoint_uuid, notify)
            else:
                reg = _prepare(run, endpoint_uuid, notify)
        if detach:
            run.lock.stop_touching()  # only the forking thread survives a fork
            outcome = daemon.detach(loaded.log_path, loaded.ep_dir)
            if isinstance(outcome, daemon.Parent):
                run.owner = False
                return Started(reg.endpoint_id, outcome.daemon_pid, loaded.log_path)
            _become_daemon(run, outcome, debug)
        if isinstance(loaded.config, ManagerConfig):
            _run_manager(run, reg)
        else:
            _run_endpoint(run, reg)
        return Started(reg.endpoint_id, log_path=loaded.log_path)
    finally:
        if run.owner:
            _finish(run)


def _prepare(run: _Run, endpoint_uuid: str | None, notify: Notifier) -> service.Registration:
    loaded = run.loaded
    cfg = loaded.user_config
    run.endpoint_id = endpoint_uuid or read_endpoint_id(loaded.ep_dir)
    run.setup_done = hooks.run_setup(cfg.endpoint_setup, loaded.ep_dir, run.endpoint_id)
    # Built (not started) before registering: a bad engine block is a config error, and
    # engines start no processes or threads until `start`, so the fork below is safe.
    run.engine = build_engine(cfg.engine.engine_spec())
    reg = register(loaded, endpoint_uuid, notify)
    run.endpoint_id = reg.endpoint_id
    return reg


def _become_daemon(run: _Run, me: daemon.Daemon, debug: bool) -> None:
    run.lock.rewrite_pid()
    run.lock.start_touching()
    # stderr now is the log file: a console handler would write every line twice.
    logs.configure(debug=debug, log_file=run.loaded.log_path, console=False)
    log.info("detached; daemon pid %s", os.getpid())
    me.ready()


def _run_endpoint(run: _Run, reg: service.Registration) -> None:
    cfg, loaded = run.loaded.user_config, run.loaded
    port = cfg.amqp_port
    assert run.engine is not None
    runtime = EndpointRuntime(
        endpoint_id=reg.endpoint_id,
        ep_dir=loaded.ep_dir,
        work_dir=cfg.paths.endpoint_dir,
        engine=run.engine,
        engine_factory=partial(build_engine, cfg.engine.engine_spec()),
        max_task_size=cfg.max_task_size,
        tasks=QueueInfo.from_service(reg.task_queue_info, port),
        results=QueueInfo.from_service(reg.result_queue_info, port),
        heartbeats=QueueInfo.from_service(reg.heartbeat_queue_info, port),
        heartbeat_period=cfg.heartbeat_period,
        prefetch_count=cfg.prefetch_count,
        allowed_functions={str(f) for f in cfg.allowed_functions}
        if cfg.allowed_functions is not None
        else None,
        max_retries_on_system_failure=cfg.engine.max_retries_on_system_failure,
        config_text=loaded.text,
        pid_lock=run.lock,
        idle_heartbeats_soft=cfg.idle_heartbeats_soft,
        idle_heartbeats_hard=cfg.idle_heartbeats_hard,
        heartbeat_threshold=cfg.heartbeat_threshold,
        title=f"Globus Compute Endpoint ({reg.endpoint_id}, {loaded.name})",
    )
    runtime.install_signal_handlers()
    runtime.run()


def _finish(run: _Run) -> None:
    try:
        if run.setup_done:
            hooks.run_teardown(
                run.loaded.user_config.endpoint_teardown, run.loaded.ep_dir, run.endpoint_id
            )
    finally:
        run.lock.release()
        log.info("========== endpoint %s exited", run.loaded.name)


# ---- manager endpoints --------------------------------------------------------------------------

#: `fork` (default: a pre-imported helper forks user endpoints) or `exec` (a fresh interpreter
#: each); a debugging and benchmarking knob, see `endpoint.spawner`.
LAUNCHER_ENV = "COMPUTE_UEP_LAUNCHER"


def is_privileged() -> bool:
    return os.geteuid() == 0


def _check_manager(loaded: Loaded) -> ManagerConfig:
    cfg = loaded.config
    assert isinstance(cfg, ManagerConfig)
    ensure_supported(cfg)
    if is_privileged() and not cfg.email:
        raise ConfigError(
            f"{loaded.path}: a multi-user (manager) endpoint run by root needs `email`, a "
            "contact address shown to its users"
        )
    return cfg


def _manager_metadata(loaded: Loaded, cfg: ManagerConfig) -> dict[str, Any]:
    """The template and schema, checked now (a broken one fails `start`, not each user)."""
    source = templating.source_for(
        loaded.ep_dir, cfg.user_config_template_path, cfg.user_config_schema_path
    )
    templating.check_syntax(source)
    return {"user_config_template": source.text, "user_config_schema": source.schema}


def owner_identities(cfg: ManagerConfig, prompt: LoginPrompt | None) -> frozenset[str]:
    """The identities of this login (`userinfo`): only they may start user endpoints."""
    env = service.environment_name(cfg.environment, cfg.local_compute_services)
    app = service.build_app(user_dir(), env, login_flow_manager=prompt)
    try:
        data = identity_client(app).userinfo().data
    except globus_sdk.NetworkError as e:
        raise ServiceUnreachable(f"userinfo: cannot reach the auth service: {e}") from e
    except globus_sdk.GlobusAPIError as e:
        raise AuthError(f"userinfo refused ({e.http_status}): {e.message}") from e
    finally:
        app.close()
    found = data.get("identity_set") if isinstance(data, dict) else None
    ids = {str(i["sub"]) for i in found or [] if isinstance(i, dict) and i.get("sub")}
    if isinstance(data, dict) and data.get("sub"):
        ids.add(str(data["sub"]))
    if not ids:
        raise AuthError("userinfo named no identity: nobody could use this endpoint")
    return frozenset(ids)


def _mapping_authorizer(cfg: ManagerConfig) -> Authorizer | None:
    """Root with an identity mapping file maps identities to local users (read it now, so a
    broken file fails `start`); otherwise None: the owner's identities decide."""
    mapping = cfg.identity_mapping_config_path
    if mapping is None:
        return None
    if not is_privileged():
        log.warning("identity_mapping_config_path is ignored: only a root manager can switch users")
        return None
    log.info("user endpoints run as the local users %s maps identities to", mapping)
    return MappingAuthorizer(MappingFile(mapping))


def _prepare_manager(
    run: _Run, endpoint_uuid: str | None, notify: Notifier
) -> service.Registration:
    loaded = run.loaded
    cfg = _check_manager(loaded)
    metadata = _manager_metadata(loaded, cfg)
    run.authorizer = _mapping_authorizer(cfg)
    reg = register(loaded, endpoint_uuid, notify, metadata)
    run.endpoint_id = reg.endpoint_id
    if reg.command_queue_info is None:
        raise ServiceError("register: the service gave no command queue for a manager endpoint")
    if run.authorizer is None:
        ids = owner_identities(cfg, notify.login_prompt())
        log.info("user endpoints run as %s, for the identities %s", getpass.getuser(), sorted(ids))
        run.authorizer = OwnerAuthorizer(ids)
    return reg


def _run_manager(run: _Run, reg: service.Registration) -> None:
    cfg = run.loaded.config
    assert isinstance(cfg, ManagerConfig) and run.authorizer is not None
    assert reg.command_queue_info is not None
    launcher = os.environ.get(LAUNCHER_ENV, "fork")
    settings = ManagerSettings(
        endpoint_id=reg.endpoint_id,
        ep_dir=run.loaded.ep_dir,
        config=cfg,
        commands=QueueInfo.from_service(reg.command_queue_info, cfg.amqp_port),
        heartbeats=QueueInfo.from_service(reg.heartbeat_queue_info, cfg.amqp_port),
        privileged=is_privileged(),
        launcher=launcher if launcher in ("fork", "exec") else "fork",
    )
    manager = Manager(settings, run.authorizer, pid_lock=run.lock)
    manager.install_signal_handlers()
    manager.run()


# ---- stop ---------------------------------------------------------------------------------------


@dataclass
class Stopped:
    name: str
    was: State
    cleaned_stale: bool = False
    locked_remotely: str | None = None
    report: daemon.StopReport | None = None


def _read_pid_soon(ep_dir: Path) -> int:
    # The holder writes its pid right after taking the lock: give it a moment.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        pid = read_pid(ep_dir)
        if pid is not None:
            return pid
        time.sleep(0.05)
    raise LifecycleError(f"{ep_dir / 'daemon.pid'} is locked but names no process")


def lock_remotely(ep_dir: Path, prompt: LoginPrompt | None) -> str:
    """`stop --remote`: have the service refuse this endpoint's registrations for a while."""
    endpoint_id = read_endpoint_id(ep_dir)
    if endpoint_id is None:
        raise LifecycleError(f"endpoint {ep_dir.name} was never registered: nothing to lock")
    try:
        cfg: Any = load_endpoint_dir(ep_dir)[0]
    except ConfigError as e:
        log.warning("using the default service: %s", e)
        cfg = None
    service_for(cfg, prompt).lock(endpoint_id)
    return endpoint_id


def stop(
    target: str | None,
    *,
    grace_s: float = STOP_GRACE_S,
    remote: bool = False,
    prompt: LoginPrompt | None = None,
) -> Stopped:
    """One call always suffices: SIGTERM, wait `grace_s`, then SIGKILL the process tree."""
    return stop_dir(resolve(target), grace_s=grace_s, remote=remote, prompt=prompt)


def stop_dir(
    ep_dir: Path,
    *,
    grace_s: float = STOP_GRACE_S,
    remote: bool = False,
    prompt: LoginPrompt | None = None,
) -> Stopped:
    found = probe(ep_dir)
    out = Stopped(ep_dir.name, found.state)
    if remote:
        out.locked_remotely = lock_remotely(ep_dir, prompt)
    if found.stale_file:
        out.cleaned_stale = clean_stale_pid(ep_dir)
        return out
    if not found.locked:
        return out
    pid = found.pid or _read_pid_soon(ep_dir)
    out.report = daemon.stop_tree(pid, lambda: probe(ep_dir).locked, grace_s)
    # A SIGKILLed endpoint could not remove its own pid file.
    clean_stale_pid(ep_dir)
    return out
