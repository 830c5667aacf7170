"""Endpoint directories, the pid file lock, and the states `list` and `start` both use.

One rule derives the state everywhere (the official endpoint's `list` and `start` disagree):
the pid file is locked with flock by the live endpoint, so a lock we can take means the
process is gone and the file is stale, whatever its age; a held lock whose file has not been
touched for STALE_AFTER_S means a hung endpoint (Disconnected).
"""

from __future__ import annotations

import enum
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from endpoint.errors import AlreadyRunning, LifecycleError

log = logging.getLogger(__name__)

PID_FILE = "daemon.pid"
ENDPOINT_JSON = "endpoint.json"
CONFIG_FILE = "config.yaml"
TOUCH_EVERY_S = 10.0
STALE_AFTER_S = 30.0


class State(enum.Enum):
    INITIALIZED = "Initialized"
    RUNNING = "Running"
    STOPPED = "Stopped"
    DISCONNECTED = "Disconnected"


def user_dir() -> Path:
    env = os.environ.get("GLOBUS_COMPUTE_USER_DIR")
    return Path(env) if env else Path.home() / ".globus_compute"


def endpoint_dir(name: str) -> Path:
    if not name or "/" in name or name in {".", ".."}:
        raise LifecycleError(f"invalid endpoint name {name!r}")
    return user_dir() / name


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
    tmp.write_text(json.dumps({"endpoint_id": endpoint_id}))
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


def state_of(ep_dir: Path) -> State:
    pid_path = ep_dir / PID_FILE
    if _lock_is_held(pid_path):
        try:
            age = time.time() - pid_path.stat().st_mtime
        except FileNotFoundError:
            age = 0.0
        return State.DISCONNECTED if age > STALE_AFTER_S else State.RUNNING
    if read_endpoint_id(ep_dir) is None:
        return State.INITIALIZED
    return State.STOPPED


def clean_stale_pid(ep_dir: Path) -> bool:
    """Remove a pid file nobody holds (left by a crash or a reboot)."""
    pid_path = ep_dir / PID_FILE
    if pid_path.exists() and not _lock_is_held(pid_path):
        log.info("removing stale pid file %s", pid_path)
        pid_path.unlink(missing_ok=True)
        return True
    return False


@dataclass
class PidLock:
    """The running endpoint's exclusive lock; its mtime is its liveness signal."""

    path: Path
    fd: int

    @classmethod
    def acquire(cls, ep_dir: Path) -> PidLock:
        path = ep_dir / PID_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        # A concurrent `list` holds a shared lock for microseconds: retry briefly before
        # concluding that another endpoint owns the directory.
        for attempt in range(5):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 4:
                    os.close(fd)
                    pid = read_pid(ep_dir)
                    raise AlreadyRunning(
                        f"endpoint {ep_dir.name} is already running (pid {pid}); stop it first"
                    ) from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def touch(self) -> None:
        os.utime(self.fd)

    def release(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
