"""Worker images for the container tests and the routing benchmark, built only when absent.

Every image is tagged with a hash of what goes into it (the Dockerfiles, the dependency
list, and this project's sources), so a second run finds them and builds nothing, and a
source change builds only the last layer (docker's cache keeps Python and the
dependencies). The build is offline: dependencies are turned into a wheelhouse on the host
(``pip wheel``, honouring the host's pip configuration and CA bundle) and copied into the
build context.

Images (``TAG`` is the content hash):

``ccep-test/python:TAG``   Debian's python3 in a venv, without this project
``ccep-test/worker:TAG``   plus this project and its dependencies
``ccep-test/img-NAME:TAG`` a worker image whose ``/etc/ccep-image`` contains NAME
``ccep-test/mismatch:TAG`` a worker image with another dill (version check must refuse it)

Podman cannot see docker's images: `load_into_podman` copies the missing ones over.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".build" / "containers"
DOCKERFILES = Path(__file__).resolve().parent / "images"
PREFIX = "ccep-test"
BASE_IMAGE = "debian:bookworm-slim"
#: The dill the mismatch image gets (the endpoint pins 0.3.9).
OTHER_DILL = "dill==0.3.8"
PIP = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]


@dataclass(frozen=True)
class ImageSet:
    tag: str

    def _name(self, repository: str) -> str:
        return f"{PREFIX}/{repository}:{self.tag}"

    @property
    def python(self) -> str:
        return self._name("python")

    @property
    def worker(self) -> str:
        return self._name("worker")

    @property
    def mismatch(self) -> str:
        return self._name("mismatch")

    def marked(self, name: str) -> str:
        return self._name(f"img-{name}")


def _run(argv: Sequence[str], **kwargs: Any) -> None:
    """Run a build step quietly; its output is shown only when it fails."""
    kwargs.setdefault("capture_output", "stdout" not in kwargs)
    done = subprocess.run(list(argv), text=True, check=False, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed:\n{done.stdout or ''}{done.stderr or ''}")


def _ok(argv: Sequence[str]) -> bool:
    done = subprocess.run(list(argv), capture_output=True, check=False)
    return done.returncode == 0


def ensure_docker() -> None:
    """A docker daemon that answers (started with tools/dockerd-up if needed) and the base."""
    if shutil.which("docker") is None:
        raise RuntimeError("docker is not installed (apt-get install docker.io)")
    if not _ok(["docker", "info"]):
        _run([str(ROOT / "tools" / "dockerd-up")])
    if not _ok(["docker", "image", "inspect", BASE_IMAGE]):
        _run([str(ROOT / "tools" / "base-image")])


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def _requirements() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return "\n".join(tomllib.load(f)["project"]["dependencies"]) + "\n"


def _sources() -> list[Path]:
    files = [ROOT / "pyproject.toml"]
    for package in ("endpoint", "webservice"):
        files += sorted(p for p in (ROOT / package).rglob("*") if p.is_file() and _shipped(p))
    return files


def _shipped(path: Path) -> bool:
    return "__pycache__" not in path.parts and path.suffix == ".py"


def _wheelhouse(requirements: str) -> Path:
    """Wheels of every dependency (and the other dill), cached by the requirement list."""
    target = CACHE / f"deps-{_digest([requirements.encode(), OTHER_DILL.encode()])}"
    if target.is_dir():
        return target
    partial = target.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "deps").mkdir(parents=True)
    (partial / "deps" / "requirements.txt").write_text(requirements)
    _run(
        [*PIP, "wheel", "--wheel-dir", str(partial / "deps"), "-r", "deps/requirements.txt"],
        cwd=partial,
    )
    _run([*PIP, "download", "--no-deps", "-d", str(partial / "old"), OTHER_DILL])
    partial.rename(target)
    return target


def _project_wheel(digest: str) -> Path:
    """This project's wheel, built from a clean copy of the sources (no stale build/)."""
    target = CACHE / f"project-{digest}"
    if target.is_dir():
        return target
    source = CACHE / "project-src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    shutil.copy2(ROOT / "pyproject.toml", source)
    for package in ("endpoint", "webservice"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    partial = target.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _run(
        [*PIP, "wheel", "--no-deps", "--wheel-dir", str(partial), "."],
        cwd=source,
    )
    partial.rename(target)
    shutil.rmtree(source, ignore_errors=True)
    for stale in CACHE.glob("project-*"):  # wheels of earlier sources
        if stale != target and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return target


def _context(wheelhouse: Path, project: Path) -> Path:
    context = CACHE / "context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    for dockerfile in DOCKERFILES.glob("*.Dockerfile"):
        shutil.copy2(dockerfile, context)
    shutil.copytree(wheelhouse / "deps", context / "deps")
    shutil.copytree(wheelhouse / "old", context / "old")
    shutil.copytree(project, context / "project")
    return context


def _exists(image: str) -> bool:
    return _ok(["docker", "image", "inspect", image])


def _build(context: Path, dockerfile: str, image: str, *args: str) -> None:
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    argv = ["docker", "build", "-q", "--network", "host", "-f", dockerfile, "-t", image, *args, "."]
    done = subprocess.run(argv, cwd=context, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # the output only matters when it failed
        raise RuntimeError(f"building {image} failed:\n{done.stdout}\n{done.stderr}")


def build_images(names: Sequence[str] = ("a", "b"), mismatch: bool = True) -> ImageSet:
    """Build whatever of the set is missing from docker, and say what it is called."""
    ensure_docker()
    requirements = _requirements()
    source_digest = _digest(p.read_bytes() for p in _sources())
    dockerfiles = sorted(DOCKERFILES.glob("*.Dockerfile"))
    images = ImageSet(
        _digest(
            [requirements.encode(), source_digest.encode(), *(p.read_bytes() for p in dockerfiles)]
        )
    )
    wanted = [images.python, images.worker, *map(images.marked, names)]
    wanted += [images.mismatch] if mismatch else []
    prune_other_tags("docker", images.tag)
    if all(_exists(image) for image in wanted):
        return images
    context = _context(_wheelhouse(requirements), _project_wheel(source_digest))
    base = f"--build-arg=BASE={BASE_IMAGE}"
    if not _exists(images.python):
        _build(context, "worker.Dockerfile", images.python, base, "--target=python")
    if not _exists(images.worker):
        _build(context, "worker.Dockerfile", images.worker, base, "--target=worker")
    parent = f"--build-arg=WORKER={images.worker}"
    for name in names:
        if not _exists(images.marked(name)):
            _build(
                context,
                "marker.Dockerfile",
                images.marked(name),
                parent,
                f"--build-arg=NAME={name}",
            )
    if mismatch and not _exists(images.mismatch):
        _build(context, "mismatch.Dockerfile", images.mismatch, parent)
    return images


def prune_other_tags(runtime: str, keep: str) -> None:
    """Remove our images of earlier builds (every source change makes a new tag)."""
    listed = subprocess.run(
        [runtime, "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    ours = (f"{PREFIX}/", f"localhost/{PREFIX}/", "ccep-bench/", "localhost/ccep-bench/")
    stale = [
        name
        for name in listed.stdout.split()
        if name.startswith(ours) and not name.endswith(f":{keep}")
    ]
    if stale:
        subprocess.run([runtime, "rmi", *stale], capture_output=True, check=False)


def ensure_podman() -> None:
    if shutil.which("podman") is None:
        raise RuntimeError("podman is not installed (apt-get install podman)")


def load_into_podman(images: Sequence[str]) -> None:
    """Copy images podman does not have yet from docker (one archive, shared layers once)."""
    ensure_podman()
    prune_other_tags("podman", images[0].rpartition(":")[2])
    copy_missing_to_podman(images)


def copy_missing_to_podman(images: Sequence[str]) -> None:
    """Copy the images podman lacks from docker, pruning nothing."""
    missing = [image for image in images if not _ok(["podman", "image", "exists", image])]
    if not missing:
        return
    save = subprocess.Popen(["docker", "save", *missing], stdout=subprocess.PIPE)
    try:
        _run(["podman", "load", "-q"], stdin=save.stdout, capture_output=True)
    finally:
        assert save.stdout is not None
        save.stdout.close()
        if save.wait() != 0:
            raise RuntimeError(f"docker save {' '.join(missing)} failed")


def podman_conf(directory: Path) -> Path:
    """A containers.conf with ulimits root may set here (it cannot raise hard limits)."""
    path = directory / "containers.conf"
    path.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n')
    return path
