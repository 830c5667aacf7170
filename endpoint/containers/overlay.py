"""What this endpoint lends a worker image: its worker code, Parsl and dill (issue 15).

A worker image need not contain this endpoint's package. Each GlobusComputeEngine block's
worker pool, and each ProcessPoolEngine container worker, starts from a directory under the
endpoint's run dir, which is bind-mounted into the container at the same path, and which
holds three trees (a process worker needs only the first two: of the third-party packages
it imports only dill):

``code-HASH/``
    This endpoint's worker-side modules, copied from the running endpoint (so they are
    byte for byte the endpoint's own, whether it runs from a source tree or an installed
    wheel): the import closure of the batch runner, the container entry and the version probe.
``pin-HASH/``
    The endpoint's own Parsl and dill, with their metadata. Both are pure Python. They are
    put *before* the image's site-packages, shadowing whatever Parsl or dill the image has:
    dill must match because functions and results travel as dill pickles, and Parsl because
    its interchange and worker pool exchange pickled messages whose fields change between
    releases (Parsl checks only the Python minor and its exact version, and the engine turns
    that check off in favour of its own probe, so nothing else would catch a difference).
``deps-HASH/``
    Parsl's other dependencies (pyzmq, psutil, typeguard, ...) as installed for the
    endpoint, put *after* the image's site-packages: an image that has them (one built with
    ``pip install globus-compute-endpoint``) keeps its own, which its users' functions were
    written against; a bare Python image gets ours. Some are compiled, so this tree is only
    lent to an image whose platform (machine and C library) is the endpoint host's.

Every tree is named by a hash of what it holds and written once (to a temporary name, then
renamed), so endpoint restarts and further blocks reuse it, and an endpoint upgrade writes
a new one. Only distribution files are copied: nothing here runs code from the image. The
engines mount the overlay directory read-only over the run dir's own mount, so no task can
change what the tasks and pools after it run.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import endpoint

log = logging.getLogger(__name__)

#: Under the run dir (which every container runtime mounts at the same path).
OVERLAY_DIR = "worker-overlay"
#: The modules a worker imports by name: the batch runner Parsl calls for every task, the
#: PID-1 entry the pool starts in, the version probe (the first Parsl task), and the
#: ProcessPoolEngine's container worker (one process per container, over stdin/stdout).
ROOT_MODULES = (
    "endpoint.engines.htex.batching",
    "endpoint.containers.entry",
    "endpoint.containers.versions",
    "endpoint.containers.worker",
)
#: Shadow the image's copies: these must be exactly the endpoint's.
PINNED = ("parsl", "dill")
#: A tree nothing used for this long (an earlier version's) goes when a new one is written.
STALE_AFTER_S = 7 * 86400


@dataclass(frozen=True)
class Overlay:
    """The three trees, as absolute paths on this host (and, mounted, in the container)."""

    code: Path
    pin: Path
    deps: Path | None

    @property
    def entry(self) -> Path:
        """The entry module as a file: run by path, it puts the trees on ``sys.path``."""
        return self.code / "endpoint" / "containers" / "entry.py"


@dataclass(frozen=True)
class Platform:
    """What decides whether compiled distributions built for one system load on another."""

    machine: str
    libc: str  # "glibc" or "" (musl and others: platform.libc_ver() knows only glibc)

    def describe(self) -> str:
        return f"{self.machine} {self.libc or 'non-glibc'}"


def host_platform() -> Platform:
    return Platform(platform.machine(), platform.libc_ver()[0])


# ---- the endpoint's worker code ----------------------------------------------------------


def package_root() -> Path:
    """The directory that holds the running ``endpoint`` package."""
    return Path(endpoint.__file__).resolve().parent.parent


def module_file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(tree: ast.AST, root: Path) -> set[str]:
    """``endpoint`` modules a module imports anywhere in its body (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "endpoint")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "endpoint":
                continue
            found.add(node.module)
            # ``from endpoint.x import y`` may name the module endpoint.x.y.
            found.update(
                f"{node.module}.{a.name}"
                for a in node.names
                if module_file(f"{node.module}.{a.name}", root) is not None
            )
    return found


def worker_modules(roots: Iterable[str] = ROOT_MODULES, root: Path | None = None) -> set[str]:
    """Every ``endpoint`` module the roots import, followed transitively, with their
    parent packages (whose ``__init__`` an import runs)."""
    root = root or package_root()
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name in seen:
                continue
            path = module_file(name, root)
            if path is None:
                raise FileNotFoundError(f"module {name} is not in {root}")
            seen.add(name)
            todo.extend(_imported(ast.parse(path.read_bytes(), str(path)), root))
    return seen


def _code_files(root: Path) -> list[tuple[str, Path]]:
    """(path in the tree, source) for every worker module, in a stable order."""
    files = []
    for module in sorted(worker_modules(root=root)):
        path = module_file(module, root)
        assert path is not None  # worker_modules found it
        files.append((path.relative_to(root).as_posix(), path))
    return files


# ---- Parsl, dill and their dependencies --------------------------------------------------


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    """The names of what ``dist`` needs without extras (markers on extras are skipped)."""
    names = []
    for requirement in dist.requires or []:
        text, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        name = text.strip()
        for stop in "<>=!~[ (":
            name = name.split(stop, 1)[0]
        names.append(name.strip())
    return names


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def dependency_closure(names: Iterable[str]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` need, transitively (those named included).

    A requirement that is not installed here is skipped: its marker excluded it on this
    Python, or the endpoint itself runs without it.
    """
    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = _canonical(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist
        todo.extend(_requirement_names(dist))
    return [found[n] for n in sorted(found)]


def _dist_files(dists: Iterable[metadata.Distribution]) -> list[tuple[str, Path]]:
    """(path in the tree, file) for every installed file of ``dists`` inside site-packages.

    Files a RECORD places elsewhere (console scripts in ``../../../bin``) are left out.
    """
    files = []
    for dist in dists:
        base = Path(str(dist.locate_file(""))).resolve()
        for entry in dist.files or []:
            path = Path(str(dist.locate_file(entry))).resolve()
            if not path.is_relative_to(base) or not path.is_file():
                continue
            files.append((path.relative_to(base).as_posix(), path))
    return sorted(files)


# ---- writing the trees -------------------------------------------------------------------


def _digest(files: list[tuple[str, Path]], extra: str = "") -> str:
    """A name for a tree: its paths and contents (what a rebuild would change)."""
    h = hashlib.sha256(extra.encode())
    for name, path in files:
        h.update(name.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def _ensure_tree(parent: Path, kind: str, files: list[tuple[str, Path]], extra: str = "") -> Path:
    """``parent/KIND-HASH`` holding ``files``, written unless it is there already."""
    target = parent / f"{kind}-{_digest(files, extra)}"
    if target.is_dir():
        _mark_used(target)
        return target
    partial = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=parent))
    try:
        for name, source in files:
            dest = partial / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            # copy2 keeps the mtime, which a .pyc's header must match to be used: the
            # trees are mounted read-only, so a stale one would be recompiled every start.
            shutil.copy2(source, dest)
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():  # not "another engine wrote it meanwhile"
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("wrote %s (%d files) for containerized workers", target, len(files))
    _prune(parent, kind, keep=target)
    return target


def _mark_used(tree: Path) -> None:
    # Only the pruning age: a tree we cannot touch is kept a while longer.
    with contextlib.suppress(OSError):
        os.utime(tree)


def _prune(parent: Path, kind: str, keep: Path) -> None:
    """Remove trees of ``kind`` unused for `STALE_AFTER_S` (earlier endpoint versions).

    By age rather than at once: a block started before an upgrade (a batch job still
    queued) may yet read the tree it was given.
    """
    cutoff = time.time() - STALE_AFTER_S
    for tree in parent.glob(f"{kind}-*"):
        try:
            stale = tree != keep and tree.is_dir() and tree.stat().st_mtime < cutoff
        except OSError:
            continue
        if stale:
            log.info("removing %s, unused for %d days", tree, STALE_AFTER_S // 86400)
            shutil.rmtree(tree, ignore_errors=True)


def overlay_root(run_dir: Path) -> Path:
    root = Path(run_dir) / OVERLAY_DIR
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def ensure_overlay(run_dir: Path, *, with_deps: bool = True) -> Overlay:
    """The trees under ``run_dir``, written where missing.

    ``with_deps`` False: the image's platform differs from this host's, so Parsl's compiled
    dependencies must come from the image itself.
    """
    root = overlay_root(run_dir)
    code = _ensure_tree(root, "code", _code_files(package_root()), endpoint.__version__)
    pinned = dependency_closure(PINNED)
    pin_dists = [d for d in pinned if _canonical(d.metadata["Name"]) in PINNED]
    pin = _ensure_tree(root, "pin", _dist_files(pin_dists))
    deps = None
    if with_deps:
        others = [d for d in pinned if _canonical(d.metadata["Name"]) not in PINNED]
        deps = _ensure_tree(
            root, "deps", _dist_files(others), f"{sys.version_info[:2]} {host_platform()}"
        )
    return Overlay(code, pin, deps)


def entry_words(overlay: Overlay, python: str = "python3") -> list[str]:
    """The command words that start a module with the overlay on ``sys.path``."""
    words = [python, os.fspath(overlay.entry), "--first", os.fspath(overlay.pin)]
    if overlay.deps is not None:
        words += ["--last", os.fspath(overlay.deps)]
    return words
