"""`worker_init` chooses the workers' Python (issue 14, item 4).

Real Parsl blocks on a LocalProvider. A user's environment is a separate venv holding a package
the endpoint's venv lacks; `worker_init` activates it, and tasks import that package. An
environment that cannot serve the endpoint (no Parsl, no dill, no worker package) fails the
block at once, and its tasks fail with a message naming both sides' versions and the fix.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import site
import sys
import venv
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from endpoint.engines.build import build_engine_from_dict
from endpoint.engines.htex.engine import GlobusComputeEngine
from tests.unit.test_engines import EPID, Results, ok, submission

#: An engine started by `worker_init_engines`, and where its results arrive.
Started = tuple[GlobusComputeEngine, Results]

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {
    "address": "127.0.0.1",
    "heartbeat_period": 1,
    "heartbeat_threshold": 3,
    "job_status_kwargs": {"strategy_period": 0.5},
}


def user_env(root: Path, *, shares_endpoint_packages: bool) -> Path:
    """A venv as a user makes one: its own module `only_here`, and `process_worker_pool.py` on
    its PATH as `pip install parsl` puts it there. With `shares_endpoint_packages` it sees the
    endpoint's packages (same Parsl, dill and worker package) through a .pth file."""
    venv.create(root, with_pip=False)
    site_dir = next(root.glob("lib/python*/site-packages"))
    (site_dir / "only_here.py").write_text("WHERE = 'the user environment'\n")
    if shares_endpoint_packages:
        (site_dir / "endpoint-packages.pth").write_text(
            "\n".join([*site.getsitepackages(), str(Path(__file__).resolve().parents[2])]) + "\n"
        )
    own_script = Path(sys.executable).parent / "process_worker_pool.py"
    shutil.copy(own_script, root / "bin" / "process_worker_pool.py")
    return root


def where() -> list[str]:
    import sys

    import only_here  # type: ignore[import-not-found]

    return [only_here.WHERE, sys.prefix]


@contextmanager
def worker_init_engines(run_dir: Path) -> Iterator[Callable[[str], Started]]:
    """Start GlobusComputeEngines on one LocalProvider block with a given worker_init; all
    are shut down at the end."""
    started: list[GlobusComputeEngine] = []

    def start(worker_init: str) -> Started:
        results = Results()
        provider = {
            "type": "LocalProvider",
            "init_blocks": 1,
            "min_blocks": 0,
            "max_blocks": 1,
            "worker_init": worker_init,
        }
        engine = build_engine_from_dict(
            {"type": "GlobusComputeEngine", **FAST, "provider": provider}
        )
        assert isinstance(engine, GlobusComputeEngine)
        engine.start(endpoint_id=EPID, run_dir=run_dir, on_result=results)
        started.append(engine)
        return engine, results

    try:
        yield start
    finally:
        for engine in started:
            engine.shutdown(wait=False)


@pytest.fixture
def engine_with(tmp_path: Path) -> Iterator[Callable[[str], Started]]:
    with worker_init_engines(tmp_path / "run") as start:
        yield start


def test_tasks_run_in_the_environment_worker_init_activates(
    tmp_path: Path, engine_with: Any
) -> None:
    env = user_env(tmp_path / "userenv", shares_endpoint_packages=True)
    engine, results = engine_with(f"source {env}/bin/activate")
    sub = submission(where)
    engine.submit(sub)
    (result,) = results.wait(sub.task_id, timeout=120)
    assert ok(result) == ["the user environment", str(env)]


def test_an_environment_that_cannot_serve_fails_the_tasks_naming_both_versions(
    tmp_path: Path, engine_with: Any
) -> None:
    env = user_env(tmp_path / "bareenv", shares_endpoint_packages=False)
    engine, results = engine_with(f"source {env}/bin/activate")
    subs = [submission(where) for _ in range(3)]
    for sub in subs:
        engine.submit(sub)
    failures = results.wait(*(s.task_id for s in subs), timeout=120)
    parsl = importlib.metadata.version("parsl")
    for failure in failures:
        assert failure.error_details is not None, failure.data
        text = failure.data
        assert f"the worker Python {env}/bin/python3" in text
        assert f"parsl missing (the endpoint has {parsl})" in text
        assert "dill missing" in text and f"pip install parsl=={parsl}" in text
