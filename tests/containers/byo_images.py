"""Images that carry nothing of this project, for the bring-your-own-image tests (issue 15).

``ccep-byo/bare:TAG``      Debian's python3 alone (no pip, no venv)
``ccep-byo/official:TAG``  the official docs' recipe: a Python, then
                           ``pip install globus-compute-endpoint==4.19.0``
``ccep-byo/official-old-parsl:TAG``  the same with the oldest Parsl 4.19.0 accepts
                           (``parsl==2026.7.27``, three months older than the endpoint's)
``ccep-byo/pypy:TAG``      python3 is Debian's PyPy (Python 3.9): a minor we cannot bridge

``TAG`` hashes only the Dockerfile (and the official image's requirement), never this
project's sources: a source change rebuilds nothing, and both images are reused across tests
and runs. The ``ccep-byo`` prefix keeps them out of `images.prune_other_tags`, which removes
``ccep-test`` images of other source hashes. The official image's wheels are fetched on the
host (``pip wheel``, honouring the host's pip configuration) into a cached wheelhouse, so
``docker build`` itself needs no network.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.containers.images import (
    BASE_IMAGE,
    CACHE,
    PIP,
    _build,
    _exists,
    _run,
    copy_missing_to_podman,
    ensure_docker,
)

DOCKERFILES = Path(__file__).resolve().parent / "images" / "byo"
PREFIX = "ccep-byo"
#: What the official docs tell users to install into a worker image, at the version the
#: official peers of this project's tests use.
OFFICIAL = "globus-compute-endpoint==4.19.0"
#: The oldest Parsl that release accepts (it requires parsl>=2026.7.27).
OLD_PARSL = "parsl==2026.7.27"


@dataclass(frozen=True)
class ByoImages:
    bare: str
    official: str
    official_old_parsl: str
    other_python: str


def _tag(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def _wheelhouse(requirements: str) -> Path:
    """Wheels of ``requirements`` and everything they need, fetched once."""
    target = CACHE / f"byo-wheels-{_tag(requirements.encode())}"
    if target.is_dir():
        return target
    partial = target.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "requirements.txt").write_text(requirements)
    _run([*PIP, "wheel", "--wheel-dir", str(partial), "-r", str(partial / "requirements.txt")])
    partial.rename(target)
    return target


def _build_official(image: str, requirements: str) -> None:
    context = CACHE / "byo-context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    shutil.copy2(DOCKERFILES / "official.Dockerfile", context)
    shutil.copytree(_wheelhouse(requirements), context / "wheels")
    try:
        _build(context, "official.Dockerfile", image, f"--build-arg=BASE={BASE_IMAGE}")
    finally:
        shutil.rmtree(context, ignore_errors=True)


def _build_plain(dockerfile: str, image: str) -> None:
    """An image from its Dockerfile alone (apt packages only)."""
    context = CACHE / "byo-plain-context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    shutil.copy2(DOCKERFILES / dockerfile, context)
    try:
        _build(context, dockerfile, image, f"--build-arg=BASE={BASE_IMAGE}")
    finally:
        shutil.rmtree(context, ignore_errors=True)


def _name(repository: str, dockerfile: str, *extra: str) -> str:
    content = (DOCKERFILES / dockerfile).read_bytes()
    return (
        f"{PREFIX}/{repository}:{_tag(content, BASE_IMAGE.encode(), *(e.encode() for e in extra))}"
    )


def build_byo_images() -> ByoImages:
    """Build whichever of the two docker lacks; say what they are called."""
    ensure_docker()
    official = f"{OFFICIAL}\n"
    old_parsl = f"{OFFICIAL}\n{OLD_PARSL}\n"
    images = ByoImages(
        bare=_name("bare", "bare.Dockerfile"),
        official=_name("official", "official.Dockerfile", OFFICIAL),
        official_old_parsl=_name("official-old-parsl", "official.Dockerfile", old_parsl),
        other_python=_name("pypy", "other-python.Dockerfile"),
    )
    if not _exists(images.bare):
        _build_plain("bare.Dockerfile", images.bare)
    if not _exists(images.official):
        _build_official(images.official, official)
    if not _exists(images.official_old_parsl):
        _build_official(images.official_old_parsl, old_parsl)
    if not _exists(images.other_python):
        _build_plain("other-python.Dockerfile", images.other_python)
    return images


def copy_to_podman(images: list[str]) -> None:
    """Copy what podman lacks from docker (never pruning anything of podman's)."""
    if shutil.which("podman") is None:
        raise RuntimeError("podman is not installed (apt-get install podman)")
    copy_missing_to_podman(images)
