"""The pid file lock of a running endpoint, and the one rule that derives its state.

The states are the seeds' (Initialized, Running, Stopped, Disconnected) and `list`, `start` and
`stop` all read them through `probe`, so they can never disagree (the official endpoint's `list`
and `start` use different staleness thresholds). The pid file is locked with flock by the live
endpoint, which makes liveness exact on one host: a lock nobody holds means the process is gone
(a crash, kill -9 or a reboot), whatever the file's age.

| state        | condition                                                           |
|--------------|---------------------------------------------------------------------|
| Running      | the lock is held and the file was touched within STALE_AFTER_S      |
| Disconnected | the lock is held but the file is stale (hung), or the file exists   |
|              | and nobody holds its lock (died without cleaning up)                |
| Stopped      | no pid file, and `endpoint.json` records a registration             |
| Initialized  | no pid file and never registered                                    |
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from endpoint.errors import AlreadyRunning, LifecycleError
from endpoint.host.dirs import read_endpoint_id
from endpoint.host.files import open_private, read_small

log = logging.getLogger(__name__)

PID_FILE = "daemon.pid"
TOUCH_EVERY_S = 10.0
STALE_AFTER_S = 30.0


class State(enum.Enum):
    INITIALIZED = "Initialized"
    RUNNING = "Running"
    STOPPED = "Stopped"
    DISCONNECTED = "Disconnected"


def _lock_is_held(pid_path: Path) -> bool:
    try:
        fd = open_private(pid_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError as e:  # a link, FIFO or device: no endpoint of ours locks one of those
        log.warning("ignoring %s: %s", pid_path, e.strerror)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_pid(ep_dir: Path) -> int | None:
    try:
        return int(read_small(ep_dir / PID_FILE, 64).strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Probe:
    """What one look at an endpoint directory found."""

    state: State
    pid: int | None = None
    #: a live process holds the lock (Running, or Disconnected because it hung)
    locked: bool = False
    #: seconds since the pid file was last touched
    age: float = 0.0

    @property
    def stale_file(self) -> bool:
        """A pid file left behind by a process that is gone."""
        return self.state is State.DISCONNECTED and not self.locked


def probe(ep_dir: Path) -> Probe:
    pid_path = ep_dir / PID_FILE
    locked = _lock_is_held(pid_path)
    try:
        age = max(0.0, time.time() - pid_path.stat().st_mtime)
        exists = True
    except FileNotFoundError:
        age, exists = 0.0, False
    if locked:
        state = State.DISCONNECTED if age > STALE_AFTER_S else State.RUNNING
        return Probe(state, read_pid(ep_dir), True, age)
    if exists:
        return Probe(State.DISCONNECTED, read_pid(ep_dir), False, age)
    if read_endpoint_id(ep_dir) is None:
        return Probe(State.INITIALIZED)
    return Probe(State.STOPPED)


def state_of(ep_dir: Path) -> State:
    return probe(ep_dir).state


def clean_stale_pid(ep_dir: Path) -> bool:
    """Remove a pid file nobody holds (left by a crash or a reboot); True if one was removed.

    The file is unlinked while we hold its lock, and `PidLock.acquire` re-checks the inode, so
    a concurrent `start` can never end up holding a lock on an unlinked file.
    """
    pid_path = ep_dir / PID_FILE
    try:
        fd = open_private(pid_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError as e:
        # Not a file an endpoint wrote (a link, FIFO or device): remove the name, never what
        # it points to (unlink does not follow links).
        log.warning("removing %s: %s", pid_path, e.strerror)
        pid_path.unlink(missing_ok=True)
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if not _same_file(fd, pid_path):
            return False
        log.info("removing stale pid file %s (pid %s)", pid_path, read_pid(ep_dir))
        pid_path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


@dataclass
class PidLock:
    """The running endpoint's exclusive lock; its mtime is its liveness signal."""

    path: Path
    fd: int
    _stop_touching: threading.Event = field(default_factory=threading.Event, repr=False)
    _toucher: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def acquire(cls, ep_dir: Path) -> PidLock:
        path = ep_dir / PID_FILE
        for _ in range(50):
            fd = open_private(path, os.O_RDWR | os.O_CREAT)  # never through a planted link
            cls._lock(fd, ep_dir)
            # A concurrent stale-file cleanup may have unlinked the file we opened: start over.
            if _same_file(fd, path):
                lock = cls(path, fd)
                lock.rewrite_pid()
                return lock
            os.close(fd)
        raise LifecycleError(f"could not take the lock {path}: it keeps changing")

    @staticmethod
    def _lock(fd: int, ep_dir: Path) -> None:
        # A concurrent `list` holds a shared lock for microseconds: retry briefly before
        # concluding that another endpoint owns the directory.
        for attempt in range(5):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if attempt == 4:
                    os.close(fd)
                    pid = read_pid(ep_dir)
                    raise AlreadyRunning(
                        f"endpoint {ep_dir.name} is already running (pid {pid}); stop it first"
                    ) from None
                time.sleep(0.02)

    def rewrite_pid(self) -> None:
        """Record the current process as the holder (again, after `--detach` forked)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def touch(self) -> None:
        os.utime(self.fd)

    def start_touching(self, every_s: float = TOUCH_EVERY_S) -> None:
        """Keep the file fresh from a thread, so a long setup never reads as Disconnected."""
        self.stop_touching()
        self._stop_touching = threading.Event()
        stop = self._stop_touching

        def loop() -> None:
            while not stop.wait(every_s):
                with contextlib.suppress(OSError):
                    self.touch()

        self._toucher = threading.Thread(target=loop, name="pid-touch", daemon=True)
        self._toucher.start()

    def stop_touching(self) -> None:
        self._stop_touching.set()
        if self._toucher is not None:
            self._toucher.join()
            self._toucher = None

    def release(self) -> None:
        self.stop_touching()
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
