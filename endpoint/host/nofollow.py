"""Reading files under an endpoint's directory without following links planted there.

`compute-endpoint diagnose` copies files out of directories that batch jobs, workers or
another user of a shared volume could write: a symlink named ``submit_scripts/job.stdout``
pointing at ``~/.ssh/id_ed25519`` must not put that key into a bundle meant for a support
request. Every path below the root is therefore opened one component at a time relative to its
parent's descriptor with ``O_NOFOLLOW`` (a link is refused wherever it sits, and a directory
swapped for a link after the listing is refused too), ``O_NONBLOCK`` (a planted FIFO cannot
hang the read) and checked to be a regular file; every read is bounded.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    """One name found under a root: `kind` is "file", "dir", "symlink" or "other"."""

    rel: PurePosixPath
    kind: str
    size: int
    mtime: float


def _open_dir(name: str | Path, dir_fd: int | None) -> int:
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _open_parent(root: Path, rel: PurePosixPath) -> int:
    """A descriptor of the directory holding `rel`, each component opened without following."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel.parts[:-1]:
            if part in ("..", "."):
                raise OSError(errno.EINVAL, "a relative path may not climb", str(rel))
            inner = _open_dir(part, fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_fd(fd: int, limit: int, tail: bool) -> tuple[bytes, int]:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    if tail and st.st_size > limit:
        os.lseek(fd, st.st_size - limit, os.SEEK_SET)
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks), st.st_size


def read_under(root: Path, rel: PurePosixPath | str, limit: int, tail: bool = False) -> bytes:
    """At most `limit` bytes of `root/rel` (its end when `tail`); OSError for a link or a
    non-regular file anywhere below `root`."""
    rel = PurePosixPath(rel)
    parent = _open_parent(root, rel)
    try:
        fd = os.open(rel.name, _FILE_FLAGS, dir_fd=parent)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symbolic link; not followed", str(rel)) from None
        raise
    finally:
        os.close(parent)
    try:
        return _read_fd(fd, limit, tail)[0]
    finally:
        os.close(fd)


def read_path(path: Path, limit: int, tail: bool = False) -> bytes:
    """`read_under` for one file named by the config: its directory is taken as given, the file
    itself must not be a link."""
    return read_under(path.parent, path.name, limit, tail)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def list_under(root: Path, max_depth: int = 6, max_entries: int = 5000) -> list[Entry]:
    """Every name below `root` (links listed, never entered), breadth first, bounded.

    A missing or unreadable root gives an empty list."""
    found: list[Entry] = []
    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return found
    queue: list[tuple[int, PurePosixPath, int]] = [(top, PurePosixPath(), 0)]
    while queue:
        fd, rel, depth = queue.pop(0)
        try:
            _scan(fd, rel, depth, max_depth, max_entries, found, queue)
        finally:
            os.close(fd)
    for fd, _rel, _depth in queue:
        os.close(fd)
    return found


def _scan(
    fd: int,
    rel: PurePosixPath,
    depth: int,
    max_depth: int,
    max_entries: int,
    found: list[Entry],
    queue: list[tuple[int, PurePosixPath, int]],
) -> None:
    try:
        names = sorted(os.listdir(fd))
    except OSError:
        return
    for name in names:
        if len(found) >= max_entries:
            return
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        kind = _kind(st.st_mode)
        found.append(Entry(rel / name, kind, st.st_size, st.st_mtime))
        if kind == "dir" and depth + 1 < max_depth:
            try:
                queue.append((_open_dir(name, fd), rel / name, depth + 1))
            except OSError:
                continue
