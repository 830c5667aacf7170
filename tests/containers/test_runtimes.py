"""Workers in real containers, under docker and podman (``--network host``, loopback only).

Each task reads ``/etc/ccep-image``, baked into its image, so a result proves where it ran.
Covers: GlobusComputeEngine blocks and ProcessPoolEngine workers inside a container (with
``-e 'A=b c'`` reaching the task intact); soft routing per task with warm reuse and
eviction at the budget; a missing image and (with a ``custom`` command, which runs the
image's own package) a version mismatch as clear error Results; and
no container left behind once an engine has stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from endpoint.containers.spec import POOL_LABEL
from endpoint.engines.base import Engine, TaskSubmission
from endpoint.engines.build import build_engine_from_dict
from endpoint.engines.routing import RoutingEngine
from endpoint.protocol.messages import Result
from tests.containers.conftest import MISSING_IMAGE, labelled_containers
from tests.containers.images import ImageSet
from tests.unit.test_engines import EPID, Results, ok, submission, wait_until

RUNTIMES = ["docker", "podman"]
QUOTED = "-e 'A=b c'"
GCE: dict[str, Any] = {
    "type": "GlobusComputeEngine",
    "address": "127.0.0.1",
    "max_workers_per_node": 1,
    "heartbeat_period": 1,
    "heartbeat_threshold": 5,
    "job_status_kwargs": {"strategy_period": 0.5},
}
PROCESS: dict[str, Any] = {"type": "ProcessPoolEngine", "max_workers": 1}


def where() -> tuple[str, str | None, bool]:
    import os

    with open("/etc/ccep-image") as f:
        name = f.read().strip()
    inside = os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")
    return name, os.environ.get("A"), inside


def task(image: str | None = None) -> TaskSubmission:
    sub = submission(where)
    if image is not None:
        sub.resource_specification = {"container_image": image}
    return sub


def error_code(result: Result) -> str:
    assert result.error_details is not None, "expected an error Result"
    return str(result.error_details["code"])


Start = Callable[..., tuple[Engine, Results]]


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> tuple[str, ImageSet]:
    name: str = request.param
    images: ImageSet = request.getfixturevalue("images" if name == "docker" else "podman_images")
    return name, images


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """start(spec) -> (engine, results); every engine is stopped and must leave nothing."""
    started: list[tuple[Engine, Results, str]] = []

    def _start(spec: dict[str, Any]) -> tuple[Engine, Results]:
        results = Results()
        engine = build_engine_from_dict(spec)
        engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
        kind = str(spec.get("container_type"))
        # The custom commands here run docker (and label their containers for this check).
        started.append((engine, results, "docker" if kind == "custom" else kind))
        return engine, results

    yield _start
    for engine, results, kind in started:
        engine.shutdown(wait=True)
        assert not results.duplicates
        assert labelled_containers(kind) == [], f"{kind} containers left behind"


def run(engine: Engine, results: Results, *subs: TaskSubmission) -> list[Result]:
    for sub in subs:
        engine.submit(sub)
    return results.wait(*(s.task_id for s in subs), timeout=120)


def counters(engine: Engine) -> dict[str, Any]:
    assert isinstance(engine, RoutingEngine)
    return dict(engine.status()["containers"])


# ---- static containers (every worker in one image) -----------------------------------------


@pytest.mark.parametrize("engine_spec", [GCE, PROCESS], ids=["gce", "process"])
def test_workers_run_inside_the_configured_image(
    runtime: tuple[str, ImageSet], start: Start, engine_spec: dict[str, Any]
) -> None:
    kind, images = runtime
    spec = {
        **engine_spec,
        "container_type": kind,
        "container_uri": images.marked("a"),
        "container_cmd_options": QUOTED,
    }
    engine, results = start(spec)
    assert engine.wait_ready(120) and engine.failure() is None
    assert len(labelled_containers(kind)) == 1  # one block / one worker, in its container
    first, second = run(engine, results, task(), task())
    assert ok(first) == ok(second) == ("a", "b c", True)


# ---- soft routing per task -----------------------------------------------------------------


def test_soft_routing_reuses_warm_pools_and_evicts_at_the_budget(
    runtime: tuple[str, ImageSet], start: Start
) -> None:
    kind, images = runtime
    engine, results = start(
        {**PROCESS, "container_type": kind, "container_routing": "soft", "max_warm_containers": 1}
    )
    a, b = images.marked("a"), images.marked("b")
    assert ok(run(engine, results, task(a))[0])[0] == "a"
    assert ok(run(engine, results, task(a))[0])[0] == "a"  # warm
    assert ok(run(engine, results, task(b))[0])[0] == "b"  # evicts a
    assert ok(run(engine, results, task(a))[0])[0] == "a"  # evicts b
    c = counters(engine)
    assert (c["cold_starts"], c["warm_hits"], c["evictions"]) == (3, 1, 2)
    assert c["cold_start_seconds"] > 0 and [p["image"] for p in c["pools"]] == [a]
    # A task without an image runs on the default pool, outside any container (and this
    # host has no /etc/ccep-image).
    (plain,) = run(engine, results, task())
    assert error_code(plain) == "RemoteExecutionError" and "ccep-image" in plain.data


def test_a_burst_is_served_image_by_image(images: ImageSet, start: Start) -> None:
    engine, results = start(
        {
            **PROCESS,
            "container_type": "docker",
            "container_routing": "soft",
            "max_warm_containers": 2,
        }
    )
    names = ["a", "b", "c"] * 4
    subs = [task(images.marked(n)) for n in names]
    done = run(engine, results, *subs)
    assert [ok(r)[0] for r in done] == names
    c = counters(engine)
    # a and b start at once, c waits for the first of them to go idle: one start per image.
    assert (c["cold_starts"], c["evictions"]) == (3, 1)
    assert c["waits"] == 4 and c["warm_pools"] == 2


def test_gce_routing_runs_each_block_in_the_task_image(
    runtime: tuple[str, ImageSet], start: Start
) -> None:
    kind, images = runtime
    engine, results = start(
        {
            **GCE,
            "container_type": kind,
            "container_cmd_options": QUOTED,
            "container_routing": "soft",
            "max_warm_containers": 2,
        }
    )
    a, b = images.marked("a"), images.marked("b")
    done = run(engine, results, task(a), task(b), task(a))
    assert [ok(r) for r in done] == [("a", "b c", True), ("b", "b c", True), ("a", "b c", True)]
    c = counters(engine)
    assert c["cold_starts"] == 2 and c["warm_pools"] == 2


# ---- failures become Results ---------------------------------------------------------------


def test_a_missing_image_is_a_clear_error_result(
    runtime: tuple[str, ImageSet], start: Start
) -> None:
    kind, _ = runtime
    engine, results = start({**PROCESS, "container_type": kind, "container_routing": "soft"})
    first, second = run(engine, results, task(MISSING_IMAGE), task(MISSING_IMAGE))
    for result in (first, second):
        assert error_code(result) == "ContainerImageNotFound"
        assert MISSING_IMAGE in result.data and "not on this host" in result.data
    assert counters(engine)["failed_starts"] == 1  # the second was refused from memory


def test_a_missing_static_image_answers_every_task(images: ImageSet, start: Start) -> None:
    engine, results = start({**GCE, "container_type": "docker", "container_uri": MISSING_IMAGE})
    assert engine.wait_ready(10)
    assert engine.failure() is not None
    (result,) = run(engine, results, task())
    assert error_code(result) == "ContainerImageNotFound"


# Both engines lend their own dill (and Parsl) to an image, so another dill in the image is
# shadowed (tests/containers/test_byo_image.py). Only a ``custom`` command, which chooses its
# own mounts, runs the image's own package, and there another dill must be refused.
def test_a_version_mismatch_is_a_clear_error_result(images: ImageSet, start: Start) -> None:
    ids = f"{os.getuid()}:{os.getgid()}"
    command = (
        f"docker run --rm -i --log-driver none --network host --user {ids}"
        f" --label {POOL_LABEL}=custom-test"
        " -v {EXECUTOR_RUNDIR}:{EXECUTOR_RUNDIR} -w {EXECUTOR_RUNDIR}"
        f" {images.mismatch} {{EXECUTOR_LAUNCH_CMD}}"
    )
    engine, results = start(
        {**PROCESS, "container_type": "custom", "container_cmd_options": command}
    )
    (result,) = run(engine, results, task())
    assert error_code(result) == "WorkerVersionMismatch"
    assert "dill 0.3.8 (endpoint: 0.3.9)" in result.data
    assert "does not match this endpoint" in result.data
    assert "container-compute-endpoint==" in result.data  # what to rebuild the image with


def test_hard_routing_serves_only_its_static_pools(images: ImageSet, start: Start) -> None:
    a, b = images.marked("a"), images.marked("b")
    engine, results = start(
        {
            **PROCESS,
            "container_type": "docker",
            "container_routing": "hard",
            "container_images": [a],
        }
    )
    refused, served = run(engine, results, task(b), task(a))
    assert error_code(refused) == "ContainerImageNotAllowed" and b in refused.data
    assert ok(served)[0] == "a"
    c = counters(engine)
    assert c["cold_starts"] == 1 and c["pools"][0]["static"] is True


def test_idle_pools_are_retired_and_their_containers_removed(
    images: ImageSet, start: Start
) -> None:
    engine, results = start(
        {
            **PROCESS,
            "container_type": "docker",
            "container_routing": "soft",
            "container_max_idletime": 1,
        }
    )
    assert ok(run(engine, results, task(images.marked("a")))[0])[0] == "a"
    assert len(labelled_containers("docker")) == 1
    wait_until(lambda: counters(engine)["idle_retirements"] == 1, timeout=15)
    wait_until(lambda: labelled_containers("docker") == [], timeout=15)
    assert counters(engine)["pools"] == []
