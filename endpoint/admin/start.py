"""`start`: the steps between a configured directory and a running endpoint.

Load the config, take the lock, run `endpoint_setup`, build the engine, register, (detach),
run (a user endpoint's runtime, or a manager: `start_manager.py`), and on the way out run
`endpoint_teardown` and drop the lock. Every step that can fail does so before `--detach`, so
its error reaches the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from endpoint.admin import service, start_manager
from endpoint.admin.register import Loaded, Notifier, claim, load, register
from endpoint.config import ManagerConfig
from endpoint.engines.base import Engine
from endpoint.host import daemon, hooks, logs
from endpoint.host.dirs import export_paths, read_endpoint_id
from endpoint.host.pidlock import PidLock
from endpoint.manager.identity import Authorizer
from endpoint.runtime.adapter import EndpointRuntime
from endpoint.runtime.build import build_runtime, new_engine

log = logging.getLogger(__name__)


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
    restore_env: Callable[[], None] = field(default=lambda: None, repr=False)


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
    debug = debug or loaded.config.debug  # `debug: true` in config.yaml, like --debug
    logs.configure(debug=debug, log_file=loaded.log_path, console=True)
    log.info("========== endpoint %s starting (%s)", loaded.name, loaded.path)
    log.debug("its configuration:\n%s", loaded.text)
    run = _Run(loaded, claim(loaded.ep_dir, notify))
    try:
        with _interruptible():
            if isinstance(loaded.config, ManagerConfig):
                reg, run.authorizer = start_manager.prepare(loaded, endpoint_uuid, notify)
                run.endpoint_id = reg.endpoint_id
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
            assert run.authorizer is not None
            start_manager.run(loaded, reg, run.authorizer, run.lock)
        else:
            _run_endpoint(run, reg)
        return Started(reg.endpoint_id, log_path=loaded.log_path)
    finally:
        if run.owner:
            _finish(run)
        run.restore_env()


def _prepare(run: _Run, endpoint_uuid: str | None, notify: Notifier) -> service.Registration:
    loaded = run.loaded
    cfg = loaded.user_config
    run.endpoint_id = endpoint_uuid or read_endpoint_id(loaded.ep_dir)
    # endpoint_setup, the engine and its workers inherit them (official 4.16 variables).
    run.restore_env = export_paths(loaded.name, loaded.ep_dir, loaded.log_path, os.environ)
    run.setup_done = hooks.run_setup(cfg.endpoint_setup, loaded.ep_dir, run.endpoint_id)
    # Built (not started) before registering: a bad engine block is a config error, and
    # engines start no processes or threads until `start`, so the fork below is safe.
    run.engine = new_engine(cfg)
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
    runtime = endpoint_runtime(run, reg)
    runtime.install_signal_handlers()
    # Every prompt (login, confirmations) is behind us; from here tasks run.
    daemon.release_stdin()
    runtime.run()


def endpoint_runtime(run: _Run, reg: service.Registration) -> EndpointRuntime:
    loaded = run.loaded
    return build_runtime(
        endpoint_id=reg.endpoint_id,
        name=loaded.name,
        ep_dir=loaded.ep_dir,
        config=loaded.user_config,
        config_text=loaded.text,
        creds=reg.creds(),
        pid_lock=run.lock,
        engine=run.engine,
    )


def _finish(run: _Run) -> None:
    try:
        if run.setup_done:
            hooks.run_teardown(
                run.loaded.user_config.endpoint_teardown, run.loaded.ep_dir, run.endpoint_id
            )
    finally:
        run.lock.release()
        log.info("========== endpoint %s exited", run.loaded.name)
