"""Endpoint directories, names, the pid file lock, and the one rule that derives a state.

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
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from endpoint.errors import AlreadyRunning, LifecycleError, NotConfigured

log = logging.getLogger(__name__)

PID_FILE = "daemon.pid"
ENDPOINT_JSON = "endpoint.json"
CONFIG_FILE = "config.yaml"
LEGACY_CONFIG_FILE = "config.py"
DEFAULT_NAME = "default"
#: Points a command straight at one endpoint directory (the official 4.19 knob).
ENDPOINT_DIR_ENV = "GLOBUS_COMPUTE_ENDPOINT_DIR"
USER_DIR_ENV = "GLOBUS_COMPUTE_USER_DIR"
TOUCH_EVERY_S = 10.0
STALE_AFTER_S = 30.0
MAX_NAME_LEN = 128

# Parsl later puts the name into shell command lines, hence the conservative character rules.
_BAD_NAME_CHARS = re.compile(r"[/\\'\"\s]")


class State(enum.Enum):
    INITIALIZED = "Initialized"
    RUNNING = "Running"
    STOPPED = "Stopped"
    DISCONNECTED = "Disconnected"


def user_dir() -> Path:
    env = os.environ.get(USER_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".globus_compute"


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def validate_name(name: str) -> str:
    """Return `name` if it may name an endpoint directory; LifecycleError saying why not."""
    problem = None
    if not name:
        problem = "it is empty"
    elif len(name) > MAX_NAME_LEN:
        problem = f"it is longer than {MAX_NAME_LEN} characters"
    elif _BAD_NAME_CHARS.search(name):
        problem = "it contains a slash, a backslash, a quote or whitespace"
    elif name.startswith(".") or ".." in name:
        problem = "it starts with '.' or contains '..'"
    elif is_uuid(name):
        problem = "a UUID would be mistaken for an endpoint id"
    if problem:
        raise LifecycleError(f"invalid endpoint name {name!r}: {problem}")
    return name


def endpoint_dir(name: str) -> Path:
    return user_dir() / validate_name(name)


def has_config(ep_dir: Path) -> bool:
    return (ep_dir / CONFIG_FILE).is_file() or (ep_dir / LEGACY_CONFIG_FILE).is_file()


def find_by_id(endpoint_id: str) -> Path | None:
    """The configured directory whose `endpoint.json` records `endpoint_id`."""
    root = user_dir()
    for ep_json in sorted(root.glob(f"*/{ENDPOINT_JSON}")) if root.is_dir() else []:
        found = read_endpoint_id(ep_json.parent)
        if found and found.lower() == endpoint_id.lower() and has_config(ep_json.parent):
            return ep_json.parent
    return None


def resolve(target: str | None) -> Path:
    """The directory of NAME_OR_UUID (default: $GLOBUS_COMPUTE_ENDPOINT_DIR, else `default`).

    Raises NotConfigured when nothing configured matches.
    """
    if target is None and os.environ.get(ENDPOINT_DIR_ENV):
        ep_dir = Path(os.environ[ENDPOINT_DIR_ENV]).expanduser()
    elif target is not None and is_uuid(target):
        found = find_by_id(target)
        if found is None:
            raise NotConfigured(
                f"Failed to find endpoint configuration: no endpoint under {user_dir()} "
                f"has id {target}"
            )
        ep_dir = found
    else:
        ep_dir = endpoint_dir(target or DEFAULT_NAME)
    if not has_config(ep_dir):
        raise NotConfigured(
            f"Failed to find endpoint configuration in {ep_dir} (no {CONFIG_FILE}); "
            f"create it with: compute-endpoint configure {ep_dir.name}"
        )
    return ep_dir


def read_endpoint_id(ep_dir: Path) -> str | None:
    try:
        data = json.loads((ep_dir / ENDPOINT_JSON).read_text())
    except (OSError, ValueError):
        return None
    value = data.get("endpoint_id") if isinstance(data, dict) else None
    return str(value) if value else None


def write_endpoint_id(ep_dir: Path, endpoint_id: str) -> None:
    path = ep_dir / ENDPOINT_JSON
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"endpoint_id": endpoint_id}, f)
    tmp.replace(path)


def _lock_is_held(pid_path: Path) -> bool:
    try:
        fd = os.open(pid_path, os.O_RDONLY)
    except FileNotFoundError:
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
        return int((ep_dir / PID_FILE).read_text().strip())
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
        fd = os.open(pid_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
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
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
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


@dataclass(frozen=True)
class Listing:
    name: str
    endpoint_id: str | None
    state: State
    path: Path


def list_endpoints() -> list[Listing]:
    """Every configured endpoint directory under the user dir, by name."""
    root = user_dir()
    rows = []
    for ep_dir in sorted(root.iterdir()) if root.is_dir() else []:
        if ep_dir.is_dir() and has_config(ep_dir):
            rows.append(Listing(ep_dir.name, read_endpoint_id(ep_dir), state_of(ep_dir), ep_dir))
    return rows
