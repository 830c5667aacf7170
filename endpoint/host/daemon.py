"""Process control: `--detach` (double fork) and `stop` (SIGTERM, grace, SIGKILL of the tree).

Detaching happens after the config is loaded, `endpoint_setup` ran and the endpoint registered,
so every error of those steps reaches the terminal. The daemon is a session leader (its own
process group), which lets `stop` kill the whole group, workers included, if it must; the
double fork also works under `docker run`, where the parent is PID 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # a Parsl dependency

from endpoint.errors import LifecycleError, StopFailed
from endpoint.host.files import open_log

log = logging.getLogger(__name__)

#: How long the original process waits for the daemon to say it holds the endpoint.
READY_TIMEOUT_S = 60.0
#: After the endpoint's own exit, how long its leftover children get before SIGKILL.
REAP_S = 5.0
#: How long a SIGKILLed endpoint may take to disappear before `stop` gives up.
KILL_WAIT_S = 10.0


@dataclass(frozen=True)
class Parent:
    """Returned in the original process: the daemon is up and holds the endpoint."""

    daemon_pid: int


@dataclass
class Daemon:
    """Returned in the daemon: call `ready()` once it holds the endpoint lock."""

    _ready_fd: int

    def ready(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._ready_fd, f"{os.getpid()}\n".encode())
            os.close(self._ready_fd)


def detach(log_path: Path, work_dir: Path) -> Parent | Daemon:
    """Double fork and setsid; stdin from /dev/null, stdout and stderr appended to `log_path`.

    No threads may run when this is called: only the calling thread survives a fork.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child > 0:
        os.close(write_fd)
        os.waitpid(child, 0)  # the middle process exits at once
        return Parent(_await_ready(read_fd, log_path))
    # The middle process: a new session without a controlling terminal, then let go of it,
    # so the daemon (not a session leader) can never acquire a terminal again.
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    # Lead a process group of our own (inside the new session), so that `stop` can SIGKILL
    # the endpoint and all its workers at once with killpg.
    os.setpgid(0, 0)
    os.chdir(work_dir)
    _redirect_stdio(log_path)
    return Daemon(write_fd)


def _redirect_stdio(log_path: Path) -> None:
    release_stdin()
    out = open_log(log_path)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)


def release_stdin() -> None:
    """Point fd 0 at /dev/null. A task (a thread of this process, or a worker that inherits
    fd 0) must never read the terminal a foreground endpoint was started from: `input()` would
    hang the task and steal the operator's keystrokes. Ctrl-C still arrives: signals come from
    the terminal, not from stdin."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
    finally:
        os.close(devnull)


def _await_ready(read_fd: int, log_path: Path) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_S
    data = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while time.monotonic() < deadline:
            chunk = pipe.read(64)
            if not chunk:
                break
            data += chunk
            if data.endswith(b"\n"):
                return int(data.strip())
    raise LifecycleError(f"the detached endpoint exited while starting; see {log_path}")


# ---- stopping ---------------------------------------------------------------------------------


@dataclass
class StopReport:
    pid: int
    #: it exited by itself within the grace period after SIGTERM
    graceful: bool = True
    #: processes that had to be SIGKILLed (the endpoint and/or its leftover children)
    killed: list[int] = field(default_factory=list)


def _alive(proc: Any) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _tree(pid: int) -> list[Any]:
    """The endpoint's descendants, and its process group if it leads one (detached)."""
    procs: dict[int, Any] = {}
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            procs[child.pid] = child
    if _leads_group(pid):
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if proc.pid != pid and os.getpgid(proc.pid) == pid:
                    procs.setdefault(proc.pid, proc)
    return list(procs.values())


def _process(pid: int) -> list[Any]:
    try:
        return [psutil.Process(pid)]
    except psutil.Error:
        return []


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _wait(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop_tree(pid: int, running: Callable[[], bool], grace_s: float) -> StopReport:
    """SIGTERM `pid`; after `grace_s` SIGKILL it and its group; then kill leftover children.

    `running` says whether the endpoint still holds its lock: that, not the pid, is the truth
    (a pid can be reused; an exited child of the caller lingers as a zombie).
    """
    report = StopReport(pid)
    # The endpoint itself is reaped too: it drops its lock a moment before it exits.
    tree = _tree(pid) + _process(pid)
    leads = _leads_group(pid)
    _kill(pid, signal.SIGTERM)
    if not _wait(lambda: not running(), grace_s):
        log.warning(
            "endpoint pid %s still running %ss after SIGTERM; sending SIGKILL", pid, grace_s
        )
        report.graceful = False
        if leads:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        _kill(pid, signal.SIGKILL)
        report.killed.append(pid)
        if not _wait(lambda: not running(), KILL_WAIT_S):
            raise StopFailed(f"endpoint pid {pid} survived SIGKILL")
    report.killed += [p for p in _reap(tree) if p not in report.killed]
    return report


def _reap(tree: list[Any]) -> list[int]:
    """Give what the endpoint left behind REAP_S to exit, then SIGKILL it."""
    _wait(lambda: not any(_alive(p) for p in tree), REAP_S)
    killed = []
    for proc in tree:
        if _alive(proc):
            log.warning("killing leftover endpoint process %s (%s)", proc.pid, _name(proc))
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed.append(proc.pid)
    if killed and not _wait(lambda: not any(_alive(p) for p in tree), KILL_WAIT_S):
        raise StopFailed(f"endpoint processes {killed} survived SIGKILL")
    return killed


def _name(proc: Any) -> str:
    try:
        return " ".join(proc.cmdline())[:80] or proc.name()
    except psutil.Error:
        return "?"
