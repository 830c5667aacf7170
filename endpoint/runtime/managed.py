"""A user endpoint started by a manager: the launch document in, one runtime, until EOF.

It is started already as its user, in its environment (see `manager/spawner.py`), with the two
pipes of `protocol/pipe.py`: the launch document and credential refreshes arrive on the control
pipe (its stdin); `ready` or the reason it cannot start goes back on the status pipe, which the
manager turns into the startup-failure heartbeat that fails the submitter's tasks.

Run by hand (`compute-endpoint _start-user-endpoint NAME`, or `python -m
endpoint.runtime.managed`) it reads the same launch document on stdin.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from endpoint.amqp.queues import AmqpCreds
from endpoint.config import EndpointConfig
from endpoint.config.rendered import validate_rendered
from endpoint.errors import AlreadyRunning, EndpointError, ProtocolError, SetupFailed
from endpoint.host import hooks, logs
from endpoint.host.daemon import release_stdin
from endpoint.host.dirs import export_paths, run_paths, user_dir
from endpoint.host.files import open_log
from endpoint.host.pidlock import PidLock
from endpoint.protocol.pipe import LaunchDoc, StatusPipe
from endpoint.runtime.adapter import EndpointRuntime
from endpoint.runtime.build import build_runtime

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BAD_LAUNCH = 65
EXIT_STARTUP_FAILED = 78
#: How long a new user endpoint waits for a previous one in the same directory to exit.
LOCK_WAIT_S = 30.0
_PR_SET_NO_NEW_PRIVS = 38


def forbid_new_privileges() -> None:
    """No setuid binary run by user code can ever regain what the manager dropped."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


# ---- starting -----------------------------------------------------------------------------


@dataclass
class Prepared:
    doc: LaunchDoc
    ep_dir: Path
    config: EndpointConfig
    lock: PidLock
    setup_done: bool = False
    runtime: EndpointRuntime | None = None


def _redirect_output(log_path: Path) -> None:
    # Engines and endpoint_setup inherit stdout/stderr: they belong in this endpoint's log.
    out = open_log(log_path)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)


def _take_lock(ep_dir: Path) -> PidLock:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return PidLock.acquire(ep_dir)
        except AlreadyRunning:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _open_dir(doc: LaunchDoc) -> tuple[Path, EndpointConfig]:
    cfg = validate_rendered(doc.config)
    # paths.* > $GLOBUS_COMPUTE_ENDPOINT_DIR / _LOG_PATH (user_environment.yaml) > defaults
    found = run_paths(
        user_dir() / doc.name, cfg.paths.endpoint_dir, cfg.paths.endpoint_log, os.environ
    )
    ep_dir, log_path = found.ep_dir, found.log
    ep_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _restore = export_paths(doc.name, ep_dir, log_path, os.environ)  # kept: this process is it
    _redirect_output(log_path)
    logs.configure(debug=cfg.debug, log_file=log_path, console=False)
    log.info("========== user endpoint %s (%s) starting", doc.endpoint_id, doc.name)
    if cfg.debug:
        log.debug(
            "Begin Compute endpoint configuration\n%sEnd Compute endpoint configuration", doc.config
        )
    return ep_dir, cfg


def managed_runtime(p: Prepared) -> EndpointRuntime:
    doc = p.doc
    return build_runtime(
        endpoint_id=doc.endpoint_id,
        name=doc.name,
        ep_dir=p.ep_dir,
        config=p.config,
        config_text=doc.config,
        creds=doc.amqp_creds,
        pid_lock=p.lock,
        allowed_functions=doc.allowed_functions,
    )


def prepare(doc: LaunchDoc) -> Prepared:
    """Directory, log, config, lock, `endpoint_setup`, engine: all that can fail at start."""
    ep_dir, cfg = _open_dir(doc)
    p = Prepared(doc, ep_dir, cfg, _take_lock(ep_dir))
    try:
        p.setup_done = hooks.run_setup(cfg.endpoint_setup, ep_dir, doc.endpoint_id)
        p.runtime = managed_runtime(p)
    except BaseException:
        finish(p)
        raise
    return p


def finish(p: Prepared) -> None:
    try:
        if p.setup_done:
            hooks.run_teardown(p.config.endpoint_teardown, p.ep_dir, p.doc.endpoint_id)
    finally:
        p.lock.release()
        log.info("========== user endpoint %s exited", p.doc.endpoint_id)


# ---- running ------------------------------------------------------------------------------


def apply_credentials(runtime: EndpointRuntime, creds: AmqpCreds, port: int | None) -> None:
    """Use refreshed credentials from the next (re)connect on. Tasks last: when the sessions
    are one object, its URL is the task queue's, as when the runtime built it."""
    queues = creds.queues(port)
    pairs = (
        (runtime.hb_session, queues.heartbeats),
        (runtime.publisher, queues.results),
        (runtime.consumer, queues.tasks),
    )
    for session, info in pairs:
        session.url = info.connection_url
    runtime.metrics.credentials_refreshed()


def watch_control(
    stream: IO[bytes], runtime: EndpointRuntime, endpoint_id: str, port: int | None
) -> None:
    """Apply credential refreshes until the manager closes the pipe; then stop."""
    for line in stream:
        try:
            creds = AmqpCreds.parse(json.loads(line)["amqp_creds"])
            if creds.endpoint_id != endpoint_id:
                raise ProtocolError(f"credentials for {creds.endpoint_id}")
        except (ValueError, KeyError, TypeError, ProtocolError) as e:
            log.warning("ignoring a bad control message from the manager: %r", e)
            continue
        apply_credentials(runtime, creds, port)
        log.info("AMQP credentials refreshed by the manager")
    log.info("the manager closed the control pipe (it stopped or died); stopping")
    runtime.request_stop()


def _read_launch(stream: IO[bytes]) -> LaunchDoc:
    line = stream.readline()
    if not line:
        raise ProtocolError("no launch document on the control pipe")
    try:
        doc = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"the launch document is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ProtocolError("the launch document must be a JSON object")
    return LaunchDoc.parse(doc)


def _failure_text(e: EndpointError) -> str:
    if isinstance(e, SetupFailed) and e.output.strip():
        return f"{e}; its output ends with:\n{e.output.strip()[-1000:]}"
    return str(e)


def _private_control(fd: int) -> int:
    """The manager's control pipe, moved off fd 0 when it is there: tasks (threads here, or
    workers, which inherit fd 0) must neither read control messages nor keep the pipe open.
    `os.dup` makes a non-inheritable copy; fd 0 then reads /dev/null."""
    if fd != 0:
        return fd
    moved = os.dup(0)
    release_stdin()
    return moved


def serve(control_fd: int = 0, status_fd: int | None = None) -> int:
    """Run one user endpoint to its end; the process exit code."""
    forbid_new_privileges()
    status = StatusPipe(status_fd)
    stream = os.fdopen(_private_control(control_fd), "rb")
    try:
        doc = _read_launch(stream)
    except ProtocolError as e:
        status.error(str(e))
        print(f"Error: {e}", file=sys.stderr)
        return EXIT_BAD_LAUNCH
    try:
        prepared = prepare(doc)
    except EndpointError as e:
        log.error("user endpoint %s cannot start: %s", doc.endpoint_id, e)
        status.error(_failure_text(e))
        return EXIT_STARTUP_FAILED
    except Exception as e:  # a directory it cannot create, say: still the submitter's answer
        log.exception("user endpoint %s cannot start", doc.endpoint_id)
        status.error(f"the user endpoint cannot start: {e}")
        return EXIT_STARTUP_FAILED
    runtime = prepared.runtime
    assert runtime is not None
    try:
        watcher = threading.Thread(
            target=watch_control,
            args=(stream, runtime, doc.endpoint_id, prepared.config.amqp_port),
            name="manager-control",
            daemon=True,
        )
        watcher.start()
        runtime.install_signal_handlers()
        status.ready()
        runtime.run()
    finally:
        finish(prepared)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m endpoint.runtime.managed [--status-fd N]`: the lean entry point."""
    args = sys.argv[1:] if argv is None else argv
    status_fd = int(args[args.index("--status-fd") + 1]) if "--status-fd" in args else None
    return serve(0, status_fd)


if __name__ == "__main__":
    sys.exit(main())
