"""The worker package's version and pins, taken from the main package's pyproject.toml.

Reading them here (rather than writing them twice) means the worker side can never be
built with another version, Parsl or dill than the endpoint it serves.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from setuptools import setup  # type: ignore[import-untyped]

MAIN = Path(__file__).resolve().parent.parent / "pyproject.toml"
#: The main package's dependencies the worker needs: Parsl runs the pool, dill the pickles.
NEEDED = ("parsl", "dill")
#: `pip install compute-endpoint-worker[sdk]`: the official SDK as a library for users'
#: functions (its ShellFunction and MPIFunction must unpickle on the workers). It brings
#: globus-sdk and pydantic, so it is not a default.
SDK = "globus-compute-sdk"


def main_project() -> dict[str, Any]:
    with MAIN.open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def pins(dependencies: list[str], names: tuple[str, ...]) -> list[str]:
    """The main package's requirement strings for `names`, exactly as written there."""
    found = []
    for requirement in dependencies:
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        if match and match.group().lower() in names:
            found.append(requirement)
    if len(found) != len(names):
        raise SystemExit(f"{MAIN} lacks a pin for one of {names}: {found}")
    return found


def scratch() -> str:
    """A fresh build directory for this run, removed when it ends.

    setuptools' default (build/ and the egg-info beside the sources) would put metadata next
    to `endpoint/` in the repository root, where Python run from there finds it as an
    installed distribution, and would pack stale modules left in build/lib by an earlier
    module list, or by a build running at the same time.
    """
    path = tempfile.mkdtemp(prefix="compute-endpoint-worker-")
    atexit.register(shutil.rmtree, path, True)
    return path


project = main_project()
work = scratch()
setup(
    version=project["version"],
    install_requires=pins(project["dependencies"], NEEDED),
    extras_require={"sdk": pins(project["dependencies"], (SDK,))},
    options={"egg_info": {"egg_base": work}, "build": {"build_base": work}},
)
