"""`start` and `stop`: the steps between a configured directory and a running endpoint.

start: load the config, take the lock, run `endpoint_setup`, build the engine, register,
(detach), run, and on the way out run `endpoint_teardown` and drop the lock. Every step that can
fail does so before `--detach`, so its error reaches the terminal. The CLI supplies a
`Notifier` so that this module never prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from endpoint import daemon, hooks, logs, service
from endpoint.auth import LoginPrompt, identity_client
from endpoint.config import EndpointConfig, load_endpoint_dir
from endpoint.engines import Engine, build_engine
from endpoint.errors import AlreadyRunning, ConfigError, LifecycleError
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
    config: EndpointConfig
    text: str
    path: Path

    @property
    def log_path(self) -> Path:
        """`paths.endpoint_log` (the loader resolves it), else `<ep_dir>/endpoint.log`."""
        return self.config.paths.endpoint_log or self.ep_dir / DEFAULT_LOG


def load(target: str | None) -> Loaded:
    """Resolve NAME_OR_UUID and load its config; a manager config is refused for now."""
    ep_dir = resolve(target)
    cfg, text, path = load_endpoint_dir(ep_dir)
    if not isinstance(cfg, EndpointConfig):
        raise ConfigError(
            f"{path}: this is a multi-user (manager) endpoint configuration (no `engine`); "
            "starting manager endpoints is not supported by this build yet"
        )
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


def register(loaded: Loaded, endpoint_uuid: str | None, notify: Notifier) -> service.Registration:
    svc = service_for(loaded.config, notify.login_prompt())
    svc.version_check()
    known_id = endpoint_uuid or read_endpoint_id(loaded.ep_dir)
    body = service.registration_body(loaded.name, loaded.text, loaded.config)
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
            reg = _prepare(run, endpoint_uuid, notify)
        if detach:
            run.lock.stop_touching()  # only the forking thread survives a fork
            outcome = daemon.detach(loaded.log_path, loaded.ep_dir)
            if isinstance(outcome, daemon.Parent):
                run.owner = False
                return Started(reg.endpoint_id, outcome.daemon_pid, loaded.log_path)
            _become_daemon(run, outcome, debug)
        _run_endpoint(run, reg)
        return Started(reg.endpoint_id, log_path=loaded.log_path)
    finally:
        if run.owner:
            _finish(run)


def _prepare(run: _Run, endpoint_uuid: str | None, notify: Notifier) -> service.Registration:
    loaded = run.loaded
    run.endpoint_id = endpoint_uuid or read_endpoint_id(loaded.ep_dir)
    run.setup_done = hooks.run_setup(loaded.config.endpoint_setup, loaded.ep_dir, run.endpoint_id)
    # Built (not started) before registering: a bad engine block is a config error, and
    # engines start no processes or threads until `start`, so the fork below is safe.
    run.engine = build_engine(loaded.config.engine.engine_spec())
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
    cfg, loaded = run.loaded.config, run.loaded
    port = cfg.amqp_port
    assert run.engine is not None
    runtime = EndpointRuntime(
        endpoint_id=reg.endpoint_id,
        ep_dir=loaded.ep_dir,
        engine=run.engine,
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
                run.loaded.config.endpoint_teardown, run.loaded.ep_dir, run.endpoint_id
            )
    finally:
        run.lock.release()
        log.info("========== endpoint %s exited", run.loaded.name)


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
