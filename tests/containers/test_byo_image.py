"""Bring your own worker image (issue 15): images with nothing of this project in them.

GlobusComputeEngine lends a container its worker code, Parsl and dill through the run dir
(`endpoint.containers.overlay`), and ProcessPoolEngine its worker code and dill, so under
real docker and podman:

* an image built from the official docs' recipe (a Python, then ``pip install
  globus-compute-endpoint==4.19.0``) runs our tasks, with our Parsl and dill ahead of its
  own and its own packages (the official SDK) importable by the functions, also when the
  image's Parsl is another release (the oldest 4.19.0 accepts) than the endpoint's;
* a bare Python image (Debian's python3, nothing else: no pip) runs our tasks, with Parsl's
  dependencies lent too;
* an image with another dill (0.3.8: a process pool refuses it) runs our tasks on ours;
* an image whose python3 is another minor (PyPy 3.9) fails every task with a version
  mismatch naming both Pythons, before any task is sent; one without python3 (Debian's
  base image) fails them saying that it needs one;
* the image's Python is asked once per image, and the lent trees are written once per run
  dir and reused;
* ProcessPoolEngine container workers (one per container, over stdin/stdout) are lent the
  worker code and dill the same way: the official-recipe and the bare image run their tasks
  under docker and podman; PyPy 3.9 fails them with the mismatch, and an image without
  python3 with ContainerStartFailed, before any worker starts.

The images are built once and reused across runs (`tests.containers.byo_images`).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from endpoint.containers import imageinfo
from endpoint.containers.overlay import OVERLAY_DIR
from endpoint.engines.base import Engine
from endpoint.engines.build import build_engine_from_dict
from endpoint.protocol.messages import Result
from tests.containers.byo_images import ByoImages, build_byo_images, copy_to_podman
from tests.containers.conftest import labelled_containers
from tests.containers.images import BASE_IMAGE, ImageSet, podman_conf
from tests.unit.test_engines import EPID, Results, ok, submission

GCE: dict[str, Any] = {
    "type": "GlobusComputeEngine",
    "address": "127.0.0.1",
    "max_workers_per_node": 1,
    "heartbeat_period": 1,
    "heartbeat_threshold": 5,
    "job_status_kwargs": {"strategy_period": 0.5},
}


def inside() -> dict[str, Any]:
    """Run as a task: which image, which Python, and where Parsl, dill and the SDK come from."""
    import importlib.metadata
    import os
    import sys

    import dill
    import parsl

    def origin(module_name: str) -> str | None:
        try:
            module = __import__(module_name)
        except ImportError:
            return None
        return str(module.__file__)

    def image_dist(name: str) -> str | None:
        """What the image's own venv holds, which the lent trees shadow."""
        own = [p for p in sys.path if p.startswith("/opt/venv/")]
        for dist in importlib.metadata.distributions(path=own):
            if dist.metadata["Name"] == name:
                return str(dist.version)
        return None

    def can_change(directory: str) -> bool:
        try:
            with open(os.path.join(directory, "tampered.py"), "w") as f:
                f.write("raise SystemExit('tampered')\n")
        except OSError:
            return False
        return True

    with open("/etc/ccep-image") as f:
        image = f.read().strip()
    return {
        "image": image,
        "python": sys.executable,
        "container": os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"),
        "parsl": (importlib.metadata.version("parsl"), parsl.__file__),
        "dill": (importlib.metadata.version("dill"), dill.__file__),
        "sdk": origin("globus_compute_sdk"),
        "zmq": origin("zmq"),
        "image_parsl": image_dist("parsl"),
        "lent_writable": can_change(os.path.dirname(parsl.__file__)),
    }


@pytest.fixture(scope="session")
def byo() -> ByoImages:
    try:
        return build_byo_images()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"the bring-your-own images could not be built (docker needed): {e}")


@pytest.fixture(scope="session")
def podman_byo(byo: ByoImages, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ByoImages]:
    try:
        copy_to_podman([byo.bare, byo.official, byo.official_old_parsl, byo.other_python])
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"podman cannot run the bring-your-own tests: {e}")
    # As in conftest: rootful podman here cannot raise hard limits, which its defaults try.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTAINERS_CONF", str(podman_conf(tmp_path_factory.mktemp("podman"))))
        yield byo


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[tuple[Engine, Results, str]]]:
    """Engines a test started; each is stopped and must leave no container behind."""
    engines: list[tuple[Engine, Results, str]] = []
    yield engines
    for engine, results, _ in engines:
        engine.shutdown(wait=True)
        assert not results.duplicates
    for kind in {kind for _, _, kind in engines}:
        assert labelled_containers(kind) == [], f"{kind} containers left behind"


def start(
    started: list[tuple[Engine, Results, str]], run_dir: Path, kind: str, image: str
) -> tuple[Engine, Results]:
    results = Results()
    engine = build_engine_from_dict({**GCE, "container_type": kind, "container_uri": image})
    engine.start(endpoint_id=EPID, run_dir=run_dir, on_result=results)
    started.append((engine, results, kind))
    return engine, results


def start_process(
    started: list[tuple[Engine, Results, str]], run_dir: Path, kind: str, image: str
) -> tuple[Engine, Results]:
    """A ProcessPoolEngine whose one worker runs in its own container of ``image``."""
    results = Results()
    spec = {"type": "ProcessPoolEngine", "max_workers": 1}
    engine = build_engine_from_dict({**spec, "container_type": kind, "container_uri": image})
    engine.start(endpoint_id=EPID, run_dir=run_dir, on_result=results)
    started.append((engine, results, kind))
    return engine, results


def where_process() -> dict[str, Any]:
    """Run as a process-pool task: which image, which Python, where dill and the SDK are."""
    import os
    import sys

    import dill

    def origin(module_name: str) -> str | None:
        try:
            module = __import__(module_name)
        except ImportError:
            return None
        return str(module.__file__)

    with open("/etc/ccep-image") as f:
        image = f.read().strip()
    return {
        "image": image,
        "python": sys.executable,
        "container": os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"),
        "dill": dill.__file__,
        "sdk": origin("globus_compute_sdk"),
        "parsl_imported": "parsl" in sys.modules,
    }


def run_one(engine: Engine, results: Results) -> Result:
    sub = submission(inside)
    engine.submit(sub)
    (result,) = results.wait(sub.task_id, timeout=180)
    return result


def lent_from(run_dir: Path, path: str) -> bool:
    return path.startswith(str((run_dir / OVERLAY_DIR).resolve()) + os.sep)


@pytest.mark.parametrize("kind", ["docker", "podman"])
def test_an_image_built_from_the_official_recipe_runs_our_tasks(
    byo: ByoImages, podman_byo: ByoImages, started: Any, tmp_path: Path, kind: str
) -> None:
    engine, results = start(started, tmp_path, kind, byo.official)
    assert engine.wait_ready(180) and engine.failure() is None, engine.failure()
    seen = ok(run_one(engine, results))
    assert seen["image"] == "byo-official" and seen["container"]
    assert seen["python"].startswith("/opt/venv/")  # the image's own Python
    # Our Parsl and dill, lent through the run dir, ahead of the image's copies...
    assert lent_from(tmp_path, seen["parsl"][1]) and lent_from(tmp_path, seen["dill"][1])
    assert seen["dill"][0] == "0.3.9"
    # ...while the image's own packages stay first for everything else.
    assert seen["sdk"] is not None and seen["sdk"].startswith("/opt/venv/")
    assert seen["zmq"].startswith("/opt/venv/")


def test_an_official_image_with_another_parsl_runs_on_the_lent_one(
    byo: ByoImages, started: Any, tmp_path: Path
) -> None:
    engine, results = start(started, tmp_path, "docker", byo.official_old_parsl)
    assert engine.wait_ready(180) and engine.failure() is None, engine.failure()
    seen = ok(run_one(engine, results))
    assert seen["image"] == "byo-official"
    assert seen["parsl"][0] == importlib.metadata.version("parsl") != seen["image_parsl"]
    assert seen["image_parsl"] == "2026.7.27"  # still installed, just shadowed
    assert lent_from(tmp_path, seen["parsl"][1])


@pytest.mark.parametrize("kind", ["docker", "podman"])
def test_a_bare_python_image_runs_our_tasks(
    byo: ByoImages, podman_byo: ByoImages, started: Any, tmp_path: Path, kind: str
) -> None:
    engine, results = start(started, tmp_path, kind, byo.bare)
    assert engine.wait_ready(180) and engine.failure() is None, engine.failure()
    first, second = run_one(engine, results), run_one(engine, results)
    for seen in (ok(first), ok(second)):
        assert seen["image"] == "byo-bare" and seen["container"]
        assert seen["python"] == "/usr/bin/python3"
        assert lent_from(tmp_path, seen["parsl"][1]) and lent_from(tmp_path, seen["dill"][1])
        assert lent_from(tmp_path, seen["zmq"])  # a compiled dependency, lent as well
        assert seen["lent_writable"] is False  # mounted read-only: no task can change them
        assert seen["sdk"] is None


def test_an_image_with_another_dill_runs_on_the_lent_one(
    images: ImageSet, started: Any, tmp_path: Path
) -> None:
    engine, results = start(started, tmp_path, "docker", images.mismatch)
    assert engine.wait_ready(180) and engine.failure() is None, engine.failure()
    seen = ok(run_one(engine, results))
    assert seen["image"] == "mismatch"
    assert seen["dill"][0] == "0.3.9" and lent_from(tmp_path, seen["dill"][1])


def test_another_python_minor_fails_tasks_naming_both_sides(
    byo: ByoImages, started: Any, tmp_path: Path
) -> None:
    engine, results = start(started, tmp_path, "docker", byo.other_python)
    assert engine.wait_ready(180)
    failure = engine.failure()
    assert failure is not None and failure.code == "WorkerVersionMismatch"
    result = run_one(engine, results)
    assert result.error_details is not None
    assert result.error_details["code"] == "WorkerVersionMismatch"
    assert "python 3.9 (endpoint: 3.11)" in result.data
    assert byo.other_python in result.data and "Use an image with Python 3.11" in result.data


def test_an_image_without_python3_fails_tasks_saying_so(
    byo: ByoImages, started: Any, tmp_path: Path
) -> None:
    engine, results = start(started, tmp_path, "docker", BASE_IMAGE)  # Debian, no Python
    assert engine.wait_ready(60)
    result = run_one(engine, results)
    assert result.error_details is not None
    assert result.error_details["code"] == "ContainerStartFailed"
    assert BASE_IMAGE in result.data and "needs a Python 3 named python3" in result.data


def test_the_image_is_asked_once_and_the_lent_trees_are_reused(
    byo: ByoImages, started: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    imageinfo._memory.clear()  # earlier tests of this session asked the image already
    engine, results = start(started, tmp_path, "docker", byo.bare)
    assert ok(run_one(engine, results))["image"] == "byo-bare"
    overlay = tmp_path / OVERLAY_DIR
    trees = sorted(p.name for p in overlay.iterdir() if p.is_dir() and p.name != "images")
    assert [t.split("-")[0] for t in trees] == ["code", "deps", "pin"]
    (cached,) = (overlay / "images").glob("*.json")
    assert oct(cached.stat().st_mode & 0o777) == "0o600"

    # A restart in the same run dir: the facts come from the file, not from a new probe.
    imageinfo._memory.clear()

    def no_probe(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the image was probed again")

    monkeypatch.setattr(imageinfo, "run_probe", no_probe)
    engine.shutdown(wait=True)
    again, again_results = start(started, tmp_path, "docker", byo.bare)
    assert ok(run_one(again, again_results))["image"] == "byo-bare"
    after = sorted(p.name for p in overlay.iterdir() if p.is_dir() and p.name != "images")
    assert after == trees  # nothing rewritten


# ---- ProcessPoolEngine: one worker per container, lent the same way ----------------------


@pytest.mark.parametrize("kind", ["docker", "podman"])
@pytest.mark.parametrize("which", ["official", "bare"])
def test_process_pool_workers_run_in_images_without_our_package(
    byo: ByoImages, podman_byo: ByoImages, started: Any, tmp_path: Path, kind: str, which: str
) -> None:
    image = byo.official if which == "official" else byo.bare
    engine, results = start_process(started, tmp_path, kind, image)
    assert engine.wait_ready(120) and engine.failure() is None, engine.failure()
    subs = [submission(where_process) for _ in range(2)]
    for sub in subs:
        engine.submit(sub)
    for result in results.wait(*(s.task_id for s in subs), timeout=120):
        seen = ok(result)
        assert seen["image"] == f"byo-{which}" and seen["container"]
        assert lent_from(tmp_path, seen["dill"])  # the endpoint's dill, read-only
        assert seen["parsl_imported"] is False  # a process worker needs no Parsl
        if which == "official":
            assert seen["python"].startswith("/opt/venv/")  # the image's own Python...
            assert seen["sdk"].startswith("/opt/venv/")  # ...and its own packages
        else:
            assert seen["python"] == "/usr/bin/python3" and seen["sdk"] is None
    trees = {p.name.split("-")[0] for p in (tmp_path / OVERLAY_DIR).iterdir() if p.is_dir()}
    assert trees - {"images"} == {"code", "pin"}  # nothing platform-bound is lent


@pytest.mark.parametrize(
    ("which", "code", "says"),
    [
        ("pypy", "WorkerVersionMismatch", "python 3.9 (endpoint: 3.11)"),
        ("no-python", "ContainerStartFailed", "needs a Python 3 named python3"),
    ],
)
def test_a_process_pool_refuses_an_image_it_cannot_serve_before_any_worker(
    byo: ByoImages, started: Any, tmp_path: Path, which: str, code: str, says: str
) -> None:
    image = byo.other_python if which == "pypy" else BASE_IMAGE  # Debian, no Python
    engine, results = start_process(started, tmp_path, "docker", image)
    assert engine.wait_ready(60)
    failure = engine.failure()
    assert failure is not None and failure.code == code
    sub = submission(where_process)
    engine.submit(sub)
    (result,) = results.wait(sub.task_id, timeout=60)
    assert result.error_details is not None and result.error_details["code"] == code
    assert image in result.data and says in result.data
    if which == "pypy":
        assert "Use an image with Python 3.11" in result.data
