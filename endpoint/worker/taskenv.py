"""Per-task environment variables without glibc's setenv leak.

glibc's ``setenv`` keeps every distinct ``NAME=value`` string it ever built, because code may
still hold a pointer from an earlier ``getenv``. Setting ``GC_TASK_UUID`` to a fresh UUID for
every task therefore grows a worker by about 95 bytes a task, for as long as it lives (measured:
+6 MB over 60,000 tasks in one worker; a long-lived endpoint runs millions).

``putenv`` instead installs a buffer the caller owns. An `EnvSlot` keeps one buffer per
variable, rewrites it in place for each task and installs it again (a no-op when it is still
installed), then records the same value in ``os.environ``'s own mapping. The C environment,
which a task's subprocesses inherit, and ``os.environ`` stay in step, and memory stays flat.
Where that is not possible (no libc, a value too long for the buffer, an ``os.environ`` without
its usual internals) the slot falls back to plain ``os.environ`` assignment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

#: Room for ``NAME=value`` and its NUL; task ids and sandbox paths are far shorter.
CAPACITY = 4096


def _libc_putenv() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        putenv = libc.putenv
    except (OSError, AttributeError) as e:
        log.debug("libc putenv unavailable (%s): per-task variables use os.environ", e)
        return None
    putenv.argtypes = [ctypes.c_char_p]
    putenv.restype = ctypes.c_int
    return putenv


class EnvSlot:
    """One environment variable whose value changes for every task."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._putenv = _libc_putenv()
        # Never freed while the slot lives: the C environment may point into it.
        self._buffer = ctypes.create_string_buffer(CAPACITY)
        self._key = os.environ.encodekey(name) if hasattr(os.environ, "encodekey") else None

    def set(self, value: str) -> None:
        entry = os.fsencode(f"{self.name}={value}")
        data = getattr(os.environ, "_data", None)
        if (
            self._putenv is None
            or self._key is None
            or len(entry) >= CAPACITY
            or not isinstance(data, dict)
        ):
            os.environ[self.name] = value
            return
        self._buffer.value = entry
        # putenv takes a char*; passing the buffer by address keeps ctypes from copying it.
        if self._putenv(ctypes.cast(self._buffer, ctypes.c_char_p)) != 0:
            os.environ[self.name] = value
            return
        data[self._key] = os.environ.encodevalue(value)

    def restore(self, saved: dict[Any, Any]) -> None:
        """Give the variable the value it has in `saved` (os.environ's raw items), or none."""
        data = getattr(os.environ, "_data", None)
        key = self._key
        if key is None or not isinstance(data, dict):
            return  # no raw items to compare with: the caller's full restore handles it
        value = saved.get(key)
        if value is None:
            if key in data:
                del os.environ[self.name]
        elif data.get(key) != value:
            self.set(os.fsdecode(value))
