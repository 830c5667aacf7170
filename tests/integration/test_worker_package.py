"""The least a `worker_init` environment needs: the compute-endpoint-worker wheel (issue 14).

A user makes a fresh venv (`python -m venv`), installs only the wheel `make worker-wheel` builds
(pip brings its Parsl and dill pins from the index) and the packages their functions need;
`worker_init` activates it. Real Parsl blocks on a LocalProvider then run the endpoint's tasks
in that venv, which holds none of the endpoint's service-side dependencies. A venv without the
wheel fails its tasks with the command that installs it.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import endpoint
from tests.integration.test_worker_init_env import worker_init_engines
from tests.unit.test_engines import ok, submission
from tests.unit.test_worker_package import build_worker_wheel

pytestmark = pytest.mark.integration

#: The endpoint's service side: none of it belongs in a worker's environment.
SERVICE_SIDE = {"docker", "pika", "globus-sdk", "pydantic", "fastapi", "uvicorn", "cryptography"}


def run(*command: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def make_venv(root: Path, *wheels: Path) -> Path:
    """`python -m venv` as a user runs it (the endpoint's Python minor), then pip install."""
    run(sys.executable, "-m", "venv", root)
    if wheels:
        # Parsl, dill and their dependencies come from the index pip is configured with.
        run(root / "bin" / "python", "-m", "pip", "install", "-q", *wheels)
    return root


def add_only_here(env: Path) -> None:
    """A package of the user's that the endpoint's venv lacks (as in test_worker_init_env)."""
    site_dir = next(env.glob("lib/python*/site-packages"))
    (site_dir / "only_here.py").write_text("WHERE = 'the user environment'\n")


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheel = build_worker_wheel(tmp_path_factory.mktemp("wheel"))
    env = make_venv(tmp_path_factory.mktemp("envs") / "worker-env", wheel)
    add_only_here(env)
    return env


LIST_DISTS = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'])"


def installed(python: Path) -> set[str]:
    """The distributions `python` sees, lower-case."""
    # Not from the checkout: `-c` puts the working directory, with its endpoint/ and
    # egg-info, first on sys.path.
    listing = run(python, "-c", LIST_DISTS, cwd=python.parent)
    return {line.strip().lower() for line in listing.splitlines()}


def inside() -> dict[str, Any]:
    import importlib.metadata
    import sys

    import only_here  # type: ignore[import-not-found]

    import endpoint

    return {
        "where": only_here.WHERE,
        "prefix": sys.prefix,
        "endpoint": endpoint.__file__,
        "dists": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()),
    }


@pytest.fixture
def engine_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """As in test_worker_init_env: a GlobusComputeEngine on a LocalProvider with worker_init.

    Started outside the checkout: LocalProvider's blocks inherit the working directory and
    `python -m` puts it on sys.path, where the checkout's endpoint/ would stand in for the
    wheel's."""
    monkeypatch.chdir(tmp_path)
    with worker_init_engines(tmp_path / "run") as start:
        yield start


def test_the_worker_wheel_alone_lacks_the_service_side(worker_env: Path) -> None:
    dists = installed(worker_env / "bin" / "python")
    assert {"compute-endpoint-worker", "parsl", "dill"} <= dists
    assert dists & (SERVICE_SIDE | {"container-compute-endpoint", "globus-compute-sdk"}) == set()


def test_tasks_run_in_a_venv_holding_only_the_worker_wheel(
    worker_env: Path, engine_with: Any
) -> None:
    engine, results = engine_with(f"source {worker_env}/bin/activate")
    subs = [submission(inside) for _ in range(3)]
    for sub in subs:
        engine.submit(sub)
    for result in results.wait(*(s.task_id for s in subs), timeout=180):
        seen = ok(result)
        assert seen["where"] == "the user environment"
        assert seen["prefix"] == str(worker_env)
        assert Path(seen["endpoint"]).is_relative_to(worker_env), seen["endpoint"]
        assert "compute-endpoint-worker" in seen["dists"]
        assert set(seen["dists"]) & SERVICE_SIDE == set(), seen["dists"]


def test_a_venv_without_the_wheel_fails_its_tasks_with_the_command_that_installs_it(
    tmp_path: Path, engine_with: Any
) -> None:
    """Parsl alone, installed the way a user would (pip install parsl==V): `python -m venv`
    links python to the same base interpreter as the endpoint's venv, and the preflight still
    runs (it compares folders, not the interpreter files)."""
    parsl, dill = importlib.metadata.version("parsl"), importlib.metadata.version("dill")
    env = tmp_path / "parsl-only"
    make_venv(env)
    run(env / "bin" / "python", "-m", "pip", "install", "-q", f"parsl=={parsl}", f"dill=={dill}")
    engine, results = engine_with(f"source {env}/bin/activate")
    subs = [submission(inside) for _ in range(2)]
    for sub in subs:
        engine.submit(sub)
    for failure in results.wait(*(s.task_id for s in subs), timeout=180):
        assert failure.error_details is not None, failure.data
        text = failure.data
        assert f"the worker Python {env}/bin/python3" in text
        assert (
            f"this endpoint's worker package missing (the endpoint has {endpoint.__version__})"
            in text
        )
        # Parsl and dill match: only the package is named missing.
        assert f"(the endpoint has {parsl})" not in text
        assert f"(the endpoint has {dill})" not in text
        assert (
            f"pip install parsl=={parsl} dill=={dill} "
            f"compute-endpoint-worker=={endpoint.__version__}" in text
        )
