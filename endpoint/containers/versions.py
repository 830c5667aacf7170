"""Does a worker in a container speak the endpoint's language?

A worker image built from another release fails in confusing ways: dill refuses a pickle, a
Parsl manager is dropped by the interchange, a Result field is missing. So a containerized
pool first asks its worker for `local_versions` (process pools: in the worker's hello; Parsl
pools: as the first Parsl task, `probe`) and the engine compares with `mismatch`. A mismatch
turns into a ``WorkerVersionMismatch`` error Result for the pool's tasks that says what to
rebuild, instead of a lost worker.

Only distribution metadata is read (no imports), so asking is cheap in every worker.
"""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Any

import endpoint
from endpoint.protocol.results import SDK_PROTOCOL_VERSION

PACKAGE = "container-compute-endpoint"
#: What every containerized worker must share with the endpoint. Python's major.minor (not
#: the patch level: bytecode and pickles are stable within a minor release), our package (it
#: carries the wire protocol), the protocol version it speaks, and dill (function pickles).
PROCESS_KEYS = ("python", "endpoint", "protocol", "dill")
#: Parsl pools also need Parsl's own wire format to match.
PARSL_KEYS = (*PROCESS_KEYS, "parsl")


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def local_versions() -> dict[str, str]:
    """This interpreter's view, as a flat JSON-able mapping."""
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "python_full": sys.version.split()[0],
        # The package's own attribute, not its distribution's metadata: a worker running
        # from the endpoint's overlay (`endpoint.containers.overlay`) has no metadata.
        "endpoint": endpoint.__version__,
        "protocol": SDK_PROTOCOL_VERSION,
        "dill": _dist_version("dill"),
        "parsl": _dist_version("parsl"),
    }


def probe(_buffer: bytes = b"", *_args: Any, **_kwargs: Any) -> dict[str, str]:
    """Run by a Parsl worker as a task payload (``context.task_executor.f``)."""
    return local_versions()


#: The importable name Parsl's worker calls for `probe`.
PROBE = f"{__name__}.probe"


def mismatch(
    ours: dict[str, str], theirs: Any, keys: tuple[str, ...], where: str, *, lent: bool = False
) -> str | None:
    """Why the worker in ``where`` cannot serve this endpoint, or None when it can.

    ``lent``: the endpoint lends the worker its code, Parsl and dill (the overlay), so the
    image itself only has to bring the Python.
    """
    if not isinstance(theirs, dict):
        return f"The worker in {where} sent an unreadable version report: {theirs!r}"
    differences = [
        f"{key} {theirs.get(key, 'missing')} (endpoint: {ours.get(key)})"
        for key in keys
        if str(theirs.get(key)) != str(ours.get(key))
    ]
    if not differences:
        return None
    head = f"The worker in {where} does not match this endpoint: {'; '.join(differences)}."
    if lent and str(theirs.get("python")) != str(ours.get("python")):
        return f"{head} {python_advice(ours.get('python'))}"
    if lent:
        return (
            f"{head} The worker imported other copies than the ones the endpoint lends it"
            " through its run dir: does the image change sys.path at startup (a"
            " sitecustomize module or a .pth file)?"
        )
    return (
        f"{head} Build the image with Python {ours.get('python')} and"
        f" {PACKAGE}=={ours.get('endpoint')}"
        f" (dill=={ours.get('dill')}, parsl=={ours.get('parsl')}), for example FROM the"
        " endpoint's worker image."
    )


def python_advice(python: str | None) -> str:
    """What to do about an image whose Python is not the endpoint's."""
    return (
        f"Use an image with Python {python} as its python3 (functions and results travel as"
        " dill pickles, which only the same Python minor version reads); the endpoint lends"
        " the worker its own code, Parsl and dill, so the image needs nothing else of ours."
    )
