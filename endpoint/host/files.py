"""Creating the endpoint's own files without following what another user planted (issue 13).

An endpoint directory may sit where others can write (a shared scratch or state volume, a
group-writable container volume), and there a symlink named ``endpoint.log`` or
``status.json`` pointing at someone else's file would have the endpoint append to it, truncate
it or change its mode. Every file the endpoint creates is therefore opened with ``O_NOFOLLOW``
(a symlink in the last component is refused), ``O_NONBLOCK`` while opening (a planted FIFO
cannot hang it) and checked to be a regular file; files replaced whole are written to a fresh
temporary file (``O_EXCL``) and renamed over the name, which replaces a planted link instead of
writing through it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

#: Flags of a log-like file: created if missing, every write at its end.
APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def open_private(path: Path | str, flags: int, mode: int = 0o600) -> int:
    """`os.open` of a file we own, refusing a symlink or anything but a regular file there.

    Raises OSError naming the path (ELOOP for a symlink, EINVAL for a FIFO, device, ...).
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, "a symbolic link is there; refusing to follow it", str(path)
            ) from None
        if e.errno == errno.ENXIO:  # a FIFO without a reader, opened for writing
            raise OSError(errno.EINVAL, "not a regular file", str(path)) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        # Blocking I/O from here on; O_NONBLOCK only guarded the open itself.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(path: Path | str, limit: int = 1024 * 1024) -> str:
    """The text of a small file of ours: a symlink, FIFO or device there raises OSError instead
    of being followed or blocking the reader (`list`, `status` and `health` read pid, id and
    status files that someone with write access to the directory could replace)."""
    fd = open_private(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")


def open_append(path: Path | str, mode: int = 0o600) -> int:
    """A log file opened for appending (created `mode` if missing); see `open_private`."""
    return open_private(path, APPEND, mode)


def is_special(path: Path | str) -> bool:
    """A path under /dev or /proc (``endpoint_log: /dev/stdout``): named on purpose by the
    config, and a symlink there (/dev/stdout -> /proc/self/fd/1) is meant to be followed."""
    parts = Path(os.path.abspath(path)).parts
    return len(parts) > 1 and parts[1] in ("dev", "proc")


def open_log(path: Path | str) -> int:
    """The endpoint's log for appending: `open_append`, except for a /dev or /proc path."""
    if is_special(path):
        return os.open(path, APPEND | os.O_CLOEXEC, 0o600)
    return open_append(path)


def refuse_symlink(path: Path | str) -> None:
    """OSError if `path` is a symlink (for files a library opens by name: the journal)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "a symbolic link is there; refusing to follow it", str(path))


def write_replace(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace `path` whole with `text`: a fresh temporary file renamed over it.

    The rename replaces whatever is at `path`, a planted symlink included, never its target;
    a stale or planted temporary name is removed first (unlink never follows a link)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
