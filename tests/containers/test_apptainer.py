"""apptainer and singularity without the binary (it cannot be installed on these machines).

A stand-in ``apptainer``/``singularity`` on PATH checks the argv the engines build (``exec``,
``--bind RUN_DIR:RUN_DIR``, ``--pwd``, an existing image file, no TTY flag) and then runs the
command on the host with ``FAKE_IMAGE`` set, the way the real runtime would run it in the
image. So everything around the runtime is exercised for real: process-pool workers over
stdio, Parsl blocks through the provider's shell, soft routing between ``.sif`` files, and a
missing ``.sif`` as a clear error Result. What the stand-in cannot show (isolation, the
image's own Python) is what the real runtime adds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from endpoint.engines.base import Engine, TaskSubmission
from endpoint.engines.build import build_engine_from_dict
from endpoint.engines.routing import RoutingEngine
from tests.unit.test_engines import EPID, Results, ok, submission

SHIM = """#!/bin/sh
# A stand-in for apptainer/singularity: check the argv, then run the command here.
log="$FAKE_RUNTIME_LOG"
echo "$0 $*" >> "$log"
[ "$1" = exec ] || { echo "expected exec, got $1" >&2; exit 90; }
shift
bound=no
while [ $# -gt 0 ]; do
  case "$1" in
    --bind) [ "$2" = "$FAKE_RUN_DIR:$FAKE_RUN_DIR" ] && bound=yes; shift 2 ;;
    --pwd) cd "$2" || exit 91; shift 2 ;;
    -t|--tty|-it) echo "a TTY was asked for" >&2; exit 92 ;;
    --env) export "$2"; shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
[ "$bound" = yes ] || { echo "the run dir is not bound" >&2; exit 93; }
[ -e "$1" ] || { echo "FATAL: could not open image $1" >&2; exit 255; }
FAKE_IMAGE="$1"
export FAKE_IMAGE
shift
exec "$@"
"""

GCE: dict[str, Any] = {
    "type": "GlobusComputeEngine",
    "address": "127.0.0.1",
    "max_workers_per_node": 1,
    "heartbeat_period": 1,
    "job_status_kwargs": {"strategy_period": 0.5},
}
PROCESS: dict[str, Any] = {"type": "ProcessPoolEngine", "max_workers": 1}


def which_image() -> tuple[str | None, str | None, str]:
    import os

    return os.environ.get("FAKE_IMAGE"), os.environ.get("A"), os.getcwd()


@pytest.fixture
def fake_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bin dir with apptainer, singularity and python3 (this venv's) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("apptainer", "singularity"):
        (bin_dir / name).write_text(SHIM)
        (bin_dir / name).chmod(0o755)
    # A script, not a symlink: Python finds its venv from the path it was started by.
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_RUNTIME_LOG", str(tmp_path / "runtime.log"))
    return tmp_path


@pytest.fixture
def run_dir(fake_runtime: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = fake_runtime / "ep"
    path.mkdir()
    monkeypatch.setenv("FAKE_RUN_DIR", str(path.resolve()))
    return path


@pytest.fixture
def start(run_dir: Path) -> Iterator[Any]:
    started: list[Engine] = []

    def _start(spec: dict[str, Any]) -> tuple[Engine, Results]:
        results = Results()
        engine = build_engine_from_dict(spec)
        engine.start(endpoint_id=EPID, run_dir=run_dir, on_result=results)
        started.append(engine)
        return engine, results

    yield _start
    for engine in started:
        engine.shutdown(wait=True)


def sif(directory: Path, name: str) -> str:
    path = directory / f"{name}.sif"
    path.write_bytes(b"")
    return str(path)


def task(image: str | None = None) -> TaskSubmission:
    sub = submission(which_image)
    if image is not None:
        sub.resource_specification = {"container_image": image}
    return sub


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
@pytest.mark.parametrize("engine_spec", [PROCESS, GCE], ids=["process", "gce"])
def test_workers_run_through_the_runtime_with_the_run_dir_bound(
    start: Any, fake_runtime: Path, run_dir: Path, runtime: str, engine_spec: dict[str, Any]
) -> None:
    image = sif(fake_runtime, "w")
    engine, results = start(
        {
            **engine_spec,
            "container_type": runtime,
            "container_uri": image,
            "container_cmd_options": "--env 'A=b c'",
        }
    )
    sub = task()
    engine.submit(sub)
    found, env, _cwd = ok(results.wait(sub.task_id, timeout=60)[0])
    assert (found, env) == (image, "b c")
    calls = (fake_runtime / "runtime.log").read_text()
    assert f"{runtime} exec --bind {run_dir.resolve()}:{run_dir.resolve()}" in calls


def test_soft_routing_between_sif_files_and_a_missing_one(start: Any, fake_runtime: Path) -> None:
    a, b = sif(fake_runtime, "a"), sif(fake_runtime, "b")
    missing = str(fake_runtime / "missing.sif")
    engine, results = start({**PROCESS, "container_type": "apptainer", "container_routing": "soft"})
    subs = [task(a), task(b), task(a), task(missing)]
    for sub in subs:
        engine.submit(sub)
    done = results.wait(*(s.task_id for s in subs), timeout=60)
    assert [ok(r)[0] for r in done[:3]] == [a, b, a]
    assert done[3].error_details is not None
    assert done[3].error_details["code"] == "ContainerImageNotFound"
    assert "does not exist" in done[3].data
    assert isinstance(engine, RoutingEngine)
    assert engine.status()["containers"]["cold_starts"] == 3  # a, b, and the failed one
