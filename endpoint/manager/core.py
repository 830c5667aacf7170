"""The manager ("core") endpoint: starts a user endpoint per submitter configuration.

It runs no tasks. It consumes its command queue; each ``cmd_start_endpoint`` names a user
endpoint (its id, name and AMQP credentials, chosen by the service) and carries the
submitter's `user_endpoint_config`. For each command the manager, on its one main thread:

1. checks the command (`command.py`) and who sent it (`identity.py`);
2. renders the template (`templating.py`) into that user endpoint's config;
3. if that user endpoint already runs with the same rendered config, hands it the fresh
   credentials over its control pipe; if it runs with another config, stops it and starts it
   again once it has exited; otherwise starts it (`spawner.py`), within `max_user_endpoints`.

Anything refused or failed is answered with the startup-failure heartbeat
(``{"error": ..., "heartbeat_period": 3}``) on the user endpoint's heartbeat queue, which
makes the service fail that submitter's waiting tasks at once. Nothing a command carries can
take the manager down.

A user endpoint that exits is recorded in the audit log. A start command that arrived while it
was exiting (within `mu_child_ep_grace_period_s`) starts it again at once; one that crashed is
reported to the service as inactive and started again by the next command.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from endpoint.amqp.pool import SessionFactory, SessionPool
from endpoint.amqp.queues import AmqpCreds, QueueInfo
from endpoint.amqp.session import AmqpSession, MessageProperties, Session
from endpoint.config import ManagerConfig
from endpoint.errors import ConfigError, EndpointError, SpawnError
from endpoint.host.loop import Connected, EventLoop, Every, Wake, run_timers
from endpoint.host.pidlock import TOUCH_EVERY_S, PidLock
from endpoint.host.proctitle import set_title
from endpoint.manager import templating
from endpoint.manager.audit import AUDIT_FILE, AuditLog
from endpoint.manager.command import Refusal, StartRequest, parse, redacted
from endpoint.manager.identity import Authorizer, LocalUser, Principal
from endpoint.manager.metrics import manager_metrics_for
from endpoint.manager.spawner import ExecLauncher, ForkServer, Launcher, SpawnSpec
from endpoint.protocol.messages import EPStatusReport, pack
from endpoint.protocol.pipe import LaunchDoc, encode

log = logging.getLogger(__name__)

USER_ENV_FILE = "user_environment.yaml"
#: The heartbeat period the official endpoint states in a startup-failure report.
FAILURE_PERIOD = 3
#: How long shutdown gives user endpoints to stop before SIGKILL.
STOP_GRACE_S = 10.0
#: How long shutdown waits for the broker to confirm the final heartbeat.
GOODBYE_WAIT_S = 5.0
#: The control pipe holds a whole launch document, so writing one never blocks the manager.
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
#: Variables of the manager's own environment never handed to user code.
# Secrets, and the manager's own directory and log (they would make every user endpoint use
# them); user_environment.yaml may still set the latter two per user.
_SCRUBBED = (
    "GLOBUS_COMPUTE_CLIENT_SECRET",
    "FUNCX_SDK_CLIENT_SECRET",
    "GLOBUS_COMPUTE_ENDPOINT_DIR",
    "GLOBUS_COMPUTE_LOG_PATH",
)


@dataclass
class UserEndpoint:
    """One running user endpoint process, as the manager tracks it."""

    request: StartRequest
    principal: Principal
    config_hash: str
    pid: int
    control_fd: int
    status_fd: int
    started: float = field(default_factory=time.monotonic)
    stopping: bool = False
    #: the latest start command that arrived while it ran: revives it if it is exiting
    pending: StartRequest | None = None
    pending_at: float = 0.0
    restart: bool = False  # stopped to change its config: start again whatever the delay

    @property
    def endpoint_id(self) -> str:
        return self.request.endpoint_id


@dataclass(frozen=True)
class ManagerSettings:
    endpoint_id: str
    ep_dir: Path
    config: ManagerConfig
    commands: QueueInfo
    heartbeats: QueueInfo
    privileged: bool = False
    launcher: str = "fork"  # or "exec"


def read_user_environment(path: Path) -> dict[str, str]:
    """`user_environment.yaml`: flat KEY: value pairs (a missing file is empty)."""
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of KEY: value")
    env = {}
    for key, value in data.items():
        if not isinstance(key, str) or isinstance(value, dict | list):
            raise ConfigError(f"{path}: {key!r} must be a name with a plain value")
        env[key] = (
            "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        )
    return env


def _env_text(value: Any) -> str:
    if value is None:
        return ""
    # YAML `true` means the shell's "true", not Python's "True".
    return str(value).lower() if isinstance(value, bool) else str(value)


def user_environment(
    user: LocalUser, req: StartRequest, extra: dict[str, str], privileged: bool
) -> dict[str, str]:
    """The environment a user endpoint starts with (a clean one when the manager is root)."""
    if privileged:
        python_bin = str(Path(sys.executable).parent)
        env = {"PATH": f"/usr/local/bin:/usr/bin:/bin:{python_bin}"}
    else:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(HOME=user.home, USER=user.name, LOGNAME=user.name, PWD=user.home)
    env.update(extra)
    # The administrator's user_environment.yaml wins over what the submitter's SDK reports.
    if version := req.user_python_version():
        env.setdefault("GC_USER_PYTHON_VERSION", version)
    if version := req.user_sdk_version():
        env.setdefault("GC_USER_SDK_VERSION", version)
    env["GLOBUS_COMPUTE_ENDPOINT_NAME"] = req.name
    return env


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


def _read_status(fd: int) -> list[dict[str, Any]]:
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    out = []
    for line in b"".join(chunks).splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                out.append(doc)
    return out


@dataclass(frozen=True)
class Command:
    """A message from the command queue."""

    generation: int
    tag: int
    props: MessageProperties
    body: bytes


@dataclass(frozen=True)
class Exited:
    """A user endpoint process ended (`status`: its wait status; None: its spawner died)."""

    pid: int
    status: int | None


def describe_exit(status: int | None) -> str:
    if status is None:
        return "was lost (its spawner died)"
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


class Manager(EventLoop):
    def __init__(
        self,
        settings: ManagerSettings,
        authorizer: Authorizer,
        pid_lock: PidLock | None = None,
        launcher: Launcher | None = None,
        sessions: SessionFactory = AmqpSession,
    ) -> None:
        super().__init__()
        self.s = settings
        self.cfg = settings.config
        self.authorizer = authorizer
        self.pid_lock = pid_lock
        self._goodbye_sent = threading.Event()
        self.ueps: dict[str, UserEndpoint] = {}
        self._by_pid: dict[int, str] = {}
        self.audit = AuditLog(settings.ep_dir / AUDIT_FILE)
        self.title = f"Globus Compute Endpoint ({settings.endpoint_id}, {settings.ep_dir.name})"
        self.launcher = launcher or self._make_launcher()
        # Commands first: the consuming role configures a session its URL shares.
        self._pool = SessionPool(self, sessions)
        self.commands = self._pool.session(
            settings.commands.connection_url,
            "amqp-commands",
            consume_queue=settings.commands.queue,
            prefetch_count=16,
            exclusive=False,
            on_message=self._on_message,
        )
        self.hb_session = self._pool.session(settings.heartbeats.connection_url, "amqp-heartbeats")
        self.metrics = manager_metrics_for(self.cfg.metrics_address, self.cfg.metrics_port)

    def _make_launcher(self) -> Launcher:
        if self.s.launcher == "exec":
            return ExecLauncher(self._on_exit)
        server = ForkServer(self._on_exit, f"{self.title} [user endpoint spawner]")
        server.start()
        return server

    # ---- events from other threads ---------------------------------------------------------
    def on_connected(self, session: Session, generation: int) -> None:
        self._events.put(Connected(session))

    def on_disconnected(self, session: Session, generation: int, reason: str) -> None:
        pass  # commands not yet acked come back from the broker after a reconnect

    def on_delivery(self, generation: int, tag: int, headers: dict[str, Any], body: bytes) -> None:
        pass  # commands arrive through `_on_message`, with their properties

    def on_consumer(self, session: Session, generation: int, consuming: bool, reason: str) -> None:
        pass  # the session logs it and consumes the command queue again once it can

    def on_confirms(self, keys: list[str], ok: bool) -> None:
        if "final-heartbeat" in keys:
            self._goodbye_sent.set()
        if not ok:
            log.warning("the broker did not take heartbeat(s) %s", keys)

    def _on_message(self, generation: int, tag: int, props: MessageProperties, body: bytes) -> None:
        self._events.put(Command(generation, tag, props, body))

    def _on_exit(self, pid: int, status: int | None) -> None:
        self._events.put(Exited(pid, status))

    # ---- the main loop -----------------------------------------------------------------------
    def run(self) -> None:
        set_title(self.title)
        self.audit.record_quietly("manager_start", endpoint_id=self.s.endpoint_id, pid=os.getpid())
        self._pool.start()
        self.metrics.start(self, self.s.ep_dir, self.s.endpoint_id)
        log.info("manager endpoint %s running", self.s.endpoint_id)
        try:
            self._loop()
        finally:
            self._shutdown()

    def _loop(self) -> None:
        period = self.cfg.heartbeat_period
        timers = [Every(period, lambda: self._heartbeat(period), time.monotonic() + period)]
        if self.pid_lock is not None:
            timers.append(Every(TOUCH_EVERY_S, self.pid_lock.touch))
        run_timers(self._stop, timers, self._step)

    def _step(self, timeout: float) -> None:
        for event in self.next_events(timeout):
            self._handle(event)

    def _handle(self, event: object) -> None:
        try:
            match event:
                case Command(generation, tag, props, body):
                    self._on_command(generation, tag, props, body)
                case Exited(pid, status):
                    self._exited(pid, status)
                case Connected(session) if session is self.hb_session:
                    self._heartbeat(self.cfg.heartbeat_period)  # be seen online at once
                case Connected() | Wake():
                    pass
                case _:
                    log.error("unknown event %r", event)
        except Exception:  # a bug must cost one event, never the manager
            log.exception("error while handling %r", type(event).__name__)

    # ---- commands ----------------------------------------------------------------------------
    def _on_command(self, generation: int, tag: int, props: MessageProperties, body: bytes) -> None:
        # At most once, as upstream: a command that crashed us must not come back forever.
        self.commands.ack(generation, tag, multiple=False)
        if props.headers.get("debug"):
            log.info("command received: %s", redacted(body))
        try:
            req = parse(props, body, time.time())
        except Refusal as e:
            log.warning("command refused: %s", e)
            if e.creds is not None:
                self._report_failure(e.creds, f"the endpoint refused the start command: {e}")
            return
        self.start_or_refresh(req)

    def start_or_refresh(self, req: StartRequest) -> None:
        try:
            self._start_or_refresh(req)
        except (EndpointError, OSError) as e:
            self._refused(req, e)
        except Exception as e:
            log.exception("unexpected error starting user endpoint %s", req.endpoint_id)
            self._refused(req, e)

    def _refused(self, req: StartRequest, e: BaseException) -> None:
        msg = str(e) if isinstance(e, EndpointError) else f"internal error: {e!r}"
        log.warning("user endpoint %s (%s) not started: %s", req.endpoint_id, req.name, msg)
        self.metrics.start_failed("refused")
        ids = [i["id"] for i in req.identities]
        self.audit.record_quietly(
            "refused", uep_id=req.endpoint_id, name=req.name, identities=ids, reason=msg
        )
        self._report_failure(req.amqp_creds, msg)

    def _start_or_refresh(self, req: StartRequest) -> None:
        principal = self.authorizer.authorize(req.identities)
        extra = read_user_environment(self.s.ep_dir / USER_ENV_FILE)
        env = user_environment(principal.user, req, extra, self.s.privileged)
        rendered = self._render(req, principal, env)
        running = self.ueps.get(req.endpoint_id)
        if running is not None:
            self._refresh(running, req, rendered.config_hash)
            return
        if len(self.ueps) >= self.cfg.max_user_endpoints:
            raise SpawnError(
                f"this endpoint already runs {len(self.ueps)} user endpoints, its limit "
                "(max_user_endpoints); try again once one of them has gone idle"
            )
        self._spawn(req, principal, rendered, env)

    def _render(
        self, req: StartRequest, principal: Principal, env: dict[str, str]
    ) -> templating.Rendered:
        source = templating.source_for(
            self.s.ep_dir, self.cfg.user_config_template_path, self.cfg.user_config_schema_path
        )
        reserved = templating.Reserved(
            user_runtime=req.user_runtime,
            parent_config=self.cfg.model_dump(mode="json"),
            mapped_identity=principal.template_view(),
            env=env,
        )
        return templating.render(source, req.user_opts, reserved)

    def _refresh(self, uep: UserEndpoint, req: StartRequest, config_hash: str) -> None:
        uep.pending, uep.pending_at = req, time.monotonic()
        if config_hash != uep.config_hash and not uep.stopping:
            log.info(
                "user endpoint %s: its config changed (%s -> %s); restarting it",
                uep.endpoint_id,
                uep.config_hash,
                config_hash,
            )
            uep.stopping = uep.restart = True
            self.launcher.signal(uep.pid, signal.SIGTERM)
            return
        try:
            refresh = {"op": "credentials", "amqp_creds": req.amqp_creds.to_json()}
            os.write(uep.control_fd, encode(refresh))
            log.info("user endpoint %s (pid %s): credentials refreshed", uep.endpoint_id, uep.pid)
        except (BlockingIOError, BrokenPipeError) as e:
            log.warning("user endpoint %s: could not refresh credentials: %s", uep.endpoint_id, e)

    def _spawn(
        self,
        req: StartRequest,
        principal: Principal,
        rendered: templating.Rendered,
        env: dict[str, str],
    ) -> None:
        began = time.monotonic()
        user = principal.user
        spec = SpawnSpec(
            user, env, user.home, f"Globus Compute Endpoint starting up for {user.name}"
        )
        control_r, control_w = _pipe()
        status_r, status_w = _pipe()
        try:
            pid = self.launcher.spawn(spec, control_r, status_w)
        except BaseException:
            for fd in (control_w, status_r):
                os.close(fd)
            raise
        finally:
            os.close(control_r)
            os.close(status_w)
        uep = UserEndpoint(req, principal, rendered.config_hash, pid, control_w, status_r)
        self.ueps[req.endpoint_id] = uep
        self._by_pid[pid] = req.endpoint_id
        self._send_launch(uep, rendered.text)
        try:
            self.audit.record("start", pid=pid, config_hash=rendered.config_hash, **_who(uep))
        except SpawnError:
            self.launcher.signal(pid, signal.SIGKILL)  # fail closed: no unaudited endpoint
            raise
        self.metrics.spawned(time.monotonic() - began)
        log.info(
            "user endpoint %s (%s) started as %s: pid %s, config %s",
            req.endpoint_id,
            req.name,
            user.name,
            pid,
            rendered.config_hash,
        )

    def _send_launch(self, uep: UserEndpoint, config_text: str) -> None:
        doc = LaunchDoc(
            name=uep.request.name,
            endpoint_id=uep.endpoint_id,
            config=config_text,
            amqp_creds=uep.request.amqp_creds,
            allowed_functions=[str(f) for f in self.cfg.allowed_functions]
            if self.cfg.allowed_functions
            else None,
            ep_info={
                "manager_id": self.s.endpoint_id,
                "posix_ppid": os.getpid(),
                "globus_matched_identity": uep.principal.identity_id,
                "globus_candidate_identities": list(uep.principal.candidates),
            },
        )
        try:
            os.write(uep.control_fd, encode(doc.to_json()))
        except OSError as e:
            log.warning("user endpoint %s: launch document not delivered: %s", uep.pid, e)
        # Later writes (credential refreshes) must never block the manager.
        os.set_blocking(uep.control_fd, False)

    # ---- exits ------------------------------------------------------------------------------
    def _exited(self, pid: int, status: int | None) -> None:
        uep_id = self._by_pid.pop(pid, None)
        uep = self.ueps.pop(uep_id, None) if uep_id else None
        if uep is None:
            return
        reports = _read_status(uep.status_fd)
        for fd in (uep.control_fd, uep.status_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        error = next((str(r["error"]) for r in reports if r.get("error")), None)
        how, ran = describe_exit(status), time.monotonic() - uep.started
        log.info("user endpoint %s (pid %s) %s after %.1fs", uep.endpoint_id, pid, how, ran)
        self.audit.record_quietly(
            "stop", pid=pid, config_hash=uep.config_hash, exit_status=status, error=error,
            ran_s=round(ran, 3), **_who(uep),
        )  # fmt: skip
        if not any(r.get("ready") for r in reports):
            # It never served: whoever waits for it must hear why, now.
            why = error or f"the user endpoint process {how} while starting"
            log.warning("user endpoint %s failed to start: %s", uep.endpoint_id, why)
            self.metrics.start_failed("exited")
            self._report_failure(uep.request.amqp_creds, why)
            return
        if status != 0 and not self._stop.is_set():
            self._report_inactive(uep, status)
        self._revive(uep)

    def _revive(self, uep: UserEndpoint) -> None:
        req = uep.pending
        if req is None or self._stop.is_set():
            return
        grace = self.cfg.mu_child_ep_grace_period_s
        if uep.restart or time.monotonic() - uep.pending_at <= grace:
            log.info("starting user endpoint %s again for a recent command", uep.endpoint_id)
            self.start_or_refresh(req)

    # ---- heartbeats -------------------------------------------------------------------------
    def _heartbeat(self, period: float, key: str | None = None) -> None:
        state = {
            "heartbeat_period": period,
            "user_endpoints": len(self.ueps),
            "max_user_endpoints": self.cfg.max_user_endpoints,
        }
        report = EPStatusReport(endpoint_id=self.s.endpoint_id, global_state=state)
        key = key or f"heartbeat:{time.monotonic_ns()}"
        self.hb_session.publish([self.s.heartbeats.outgoing(key, pack(report))])

    def _publish_to(self, creds: AmqpCreds, state: dict[str, Any]) -> None:
        """A heartbeat for a user endpoint, on the queue its credentials name."""
        info = creds.queues(self.cfg.amqp_port).heartbeats
        report = EPStatusReport(endpoint_id=creds.endpoint_id, global_state=state)
        out = info.outgoing(f"uep-status:{time.monotonic_ns()}", pack(report))
        if info.connection_url == self.hb_session.url:
            self.hb_session.publish([out])
            return
        threading.Thread(target=_publish_once, args=(info, out), daemon=True).start()

    def _report_failure(self, creds: AmqpCreds, message: str) -> None:
        self._publish_to(creds, {"error": message, "heartbeat_period": FAILURE_PERIOD})

    def _report_inactive(self, uep: UserEndpoint, status: int | None) -> None:
        state = {
            "active": False,
            "heartbeat_period": self.cfg.heartbeat_period,
            "exit_status": status,
            "reason": f"the user endpoint process {describe_exit(status)}",
        }
        self._publish_to(uep.request.amqp_creds, state)

    # ---- shutdown ---------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Stop user endpoints, say goodbye, close everything."""
        set_title(self.title + " [shutdown in progress]")
        log.info("manager stopping; %s user endpoint(s) to stop", len(self.ueps))
        self._stop_user_endpoints()
        self._heartbeat(0, "final-heartbeat")  # "shutting down now"
        self._goodbye_sent.wait(GOODBYE_WAIT_S)
        self._pool.stop()
        self.launcher.close()
        self.audit.record_quietly("manager_stop", endpoint_id=self.s.endpoint_id, pid=os.getpid())
        self.audit.close()
        self.metrics.stop()
        log.info("manager endpoint %s stopped", self.s.endpoint_id)

    def _stop_user_endpoints(self) -> None:
        for uep in self.ueps.values():
            uep.pending = None
            self.launcher.signal(uep.pid, signal.SIGTERM)
        self._drain_exits(STOP_GRACE_S)
        for uep in self.ueps.values():
            log.warning("user endpoint %s ignored SIGTERM; killing it", uep.pid)
            self.launcher.signal(uep.pid, signal.SIGKILL)
        self._drain_exits(STOP_GRACE_S)

    def _drain_exits(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.ueps and time.monotonic() < deadline:
            for event in self.next_events(0.1):
                if isinstance(event, Exited):
                    self._handle(event)
            # Commands not acked now are redelivered to the next manager run.


def _who(uep: UserEndpoint) -> dict[str, Any]:
    return {
        "uep_id": uep.endpoint_id,
        "name": uep.request.name,
        "identity": uep.principal.identity_id,
        "username": uep.request.username,
        "local_user": uep.principal.user.name,
        "uid": uep.principal.user.uid,
    }


def _publish_once(info: QueueInfo, out: Any) -> None:
    """A publish on a connection of its own (credentials for another broker): rare."""
    import pika  # only here: the sessions otherwise own every broker connection

    try:
        conn = pika.BlockingConnection(pika.URLParameters(info.connection_url))
        try:
            ch = conn.channel()
            ch.basic_publish(
                out.exchange, out.routing_key, out.body, pika.BasicProperties(**out.properties)
            )
        finally:
            conn.close()
    except Exception as e:
        log.warning("could not publish a user endpoint status to its broker: %s", e)


def ensure_supported(cfg: ManagerConfig) -> None:
    if cfg.pam.enable:
        raise ConfigError(
            "pam.enable: PAM account and session checks are not implemented by this endpoint;"
            " remove the pam block or set enable: false"
        )


__all__ = ["Manager", "ManagerSettings", "ensure_supported", "read_user_environment"]
