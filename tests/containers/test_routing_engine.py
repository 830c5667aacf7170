"""RoutingEngine's wiring with stand-in pools (thread engines): which pool gets a task, the
spec the pool sees, counters, failures as error Results, shutdown. Real containers are in
test_docker.py and test_podman.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from endpoint.config.engines import ProcessPoolEngineConfig, ThreadPoolEngineConfig
from endpoint.containers.router import RoutingSettings
from endpoint.engines.base import Engine, Failure, TaskSubmission
from endpoint.engines.routing import PoolFactory, RoutingEngine, split_image
from endpoint.engines.thread import ThreadPoolEngine
from tests.unit.test_engines import EPID, Results, add, nap, ok, submission


class RecordingPool(ThreadPoolEngine):
    """A pool that remembers its image and tasks, and can fail like a container pool."""

    def __init__(self, image: str, failure: Failure | None = None, delay: float = 0.0) -> None:
        super().__init__(ThreadPoolEngineConfig(max_workers=1))
        self.image = image
        self.delay = delay
        self.tasks: list[str] = []
        self.stopped = threading.Event()
        self._failure = failure

    def submit(self, task: TaskSubmission) -> None:
        self.tasks.append(task.task_id)
        super().submit(task)

    def failure(self) -> Failure | None:
        return self._failure

    def wait_ready(self, timeout: float) -> bool:
        time.sleep(self.delay)  # a container taking its time to start
        return True

    def shutdown(self, *, wait: bool = True) -> None:
        super().shutdown(wait=wait)
        self.stopped.set()


class FakeFactory(PoolFactory):
    def __init__(self, failures: dict[str, Failure] | None = None, delay: float = 0.0) -> None:
        default = ProcessPoolEngineConfig(container_type="docker", container_uri="default:1")
        super().__init__(ThreadPoolEngine, default, 1)
        self.failures = failures or {}
        self.delay = delay
        self.pools: list[RecordingPool] = []

    def build(self, image: str, pool_id: str) -> Engine:
        pool = RecordingPool(image, self.failures.get(image), self.delay)
        self.pools.append(pool)
        return pool

    def pool(self, image: str) -> RecordingPool:
        return next(p for p in reversed(self.pools) if p.image == image)


def with_image(fn: Any, *args: Any, image: Any) -> TaskSubmission:
    sub = submission(fn, *args)
    sub.resource_specification = {"container_image": image}
    return sub


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[Any]:
    """routed(**settings) -> (engine, results, factory)."""
    made: list[RoutingEngine] = []

    def _make(failures: dict[str, Failure] | None = None, **settings: Any) -> Any:
        factory = FakeFactory(failures)
        engine = RoutingEngine(
            default=ThreadPoolEngine(ThreadPoolEngineConfig(max_workers=2)),
            factory=factory,
            settings=RoutingSettings(**settings),
        )
        results = Results()
        engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
        made.append(engine)
        return engine, results, factory

    yield _make
    for engine in made:
        engine.shutdown(wait=False)


def counters(engine: RoutingEngine) -> dict[str, Any]:
    return dict(engine.status()["containers"])


def test_split_image_takes_the_key_out_of_the_specification() -> None:
    sub = submission(add, 1)
    sub.resource_specification = {"container_image": " img:1 ", "priority": 3}
    image, cleaned, problem = split_image(sub)
    assert (image, cleaned.resource_specification, problem) == ("img:1", {"priority": 3}, None)
    assert sub.resource_specification["container_image"] == " img:1 "  # not mutated
    sub.resource_specification = {"container_image": 7}
    assert "must be an image name" in str(split_image(sub)[2])
    plain = submission(add, 1)
    assert split_image(plain) == (None, plain, None)


def test_tasks_go_to_their_image_pool_and_others_to_the_default(routed: Any) -> None:
    engine, results, factory = routed(max_warm=2)
    a, b, plain = (
        with_image(add, 1, image="a:1"),
        with_image(add, 2, image="b:1"),
        submission(add, 3),
    )
    same_as_default = with_image(add, 4, image="default:1")
    for sub in (a, b, plain, same_as_default):
        engine.submit(sub)
    # Thread pools refuse any resource_specification: success proves the key was removed.
    assert [
        ok(r) for r in results.wait(a.task_id, b.task_id, plain.task_id, same_as_default.task_id)
    ] == [3, 4, 5, 6]
    assert factory.pool("a:1").tasks == [a.task_id] and factory.pool("b:1").tasks == [b.task_id]
    assert len(factory.pools) == 2  # the default image never gets a pool of its own
    c = counters(engine)
    assert c["tasks"] == 2 and c["cold_starts"] == 2 and c["warm_pools"] == 2


def test_warm_pools_are_reused(routed: Any) -> None:
    engine, results, factory = routed(max_warm=1)
    first = with_image(add, 1, image="a:1")
    engine.submit(first)
    results.wait(first.task_id)
    later = [with_image(add, n, image="a:1") for n in range(5)]
    for sub in later:
        engine.submit(sub)
    results.wait(*(s.task_id for s in later))
    c = counters(engine)
    assert c["cold_starts"] == 1 and c["warm_hits"] == 5 and len(factory.pools) == 1


def test_a_full_budget_evicts_the_idle_pool(routed: Any) -> None:
    engine, results, factory = routed(max_warm=1)
    a = with_image(add, 1, image="a:1")
    engine.submit(a)
    results.wait(a.task_id)
    b = with_image(add, 2, image="b:1")
    engine.submit(b)
    assert ok(results.wait(b.task_id)[0]) == 4
    assert factory.pool("a:1").stopped.wait(5)
    c = counters(engine)
    assert c["evictions"] == 1 and c["cold_starts"] == 2
    assert [p["image"] for p in c["pools"]] == ["b:1"]


def test_tasks_wait_while_every_pool_is_busy(routed: Any, tmp_path: Path) -> None:
    engine, results, _ = routed(max_warm=1)
    slow = with_image(nap, 0.5, image="a:1")
    engine.submit(slow)
    waiting = with_image(add, 1, image="b:1")
    engine.submit(waiting)
    assert ok(results.wait(waiting.task_id)[0]) == 3
    c = counters(engine)
    assert c["waits"] == 1 and c["evictions"] == 1


def test_a_pool_that_fails_to_start_answers_with_its_error(routed: Any) -> None:
    failures = {"old:1": Failure("WorkerVersionMismatch", "dill 0.3.8 (endpoint: 0.3.9)")}
    engine, results, factory = routed(failures=failures, max_warm=2)
    subs = [with_image(add, n, image="old:1") for n in range(3)]
    for sub in subs:
        engine.submit(sub)
    for result in results.wait(*(s.task_id for s in subs)):
        assert result.error_details is not None
        assert result.error_details["code"] == "WorkerVersionMismatch"
        assert "dill 0.3.8" in result.data
    assert factory.pool("old:1").stopped.wait(5)
    c = counters(engine)
    assert c["failed_starts"] == 1 and c["pools"] == []


@pytest.mark.parametrize("image", [["not", "a", "name"], "--privileged", "a b", ""])
def test_a_bad_image_value_is_an_error_result(routed: Any, image: Any) -> None:
    engine, results, factory = routed()
    sub = with_image(add, 1, image=image)
    engine.submit(sub)
    (result,) = results.wait(sub.task_id)
    assert result.error_details is not None
    assert result.error_details["code"] == "ResourceSpecificationNotSupported"
    assert factory.pools == []  # nothing was started for it


def test_hard_routing_starts_its_pools_and_refuses_other_images(routed: Any) -> None:
    engine, results, factory = routed(mode="hard", images=("a:1",))
    assert [p.image for p in factory.pools] == ["a:1"]
    refused = with_image(add, 1, image="z:1")
    engine.submit(refused)
    (result,) = results.wait(refused.task_id)
    assert result.error_details is not None
    assert result.error_details["code"] == "ContainerImageNotAllowed"
    assert "hard routing runs only: a:1" in result.data


def test_graceful_shutdown_runs_waiting_tasks_first(tmp_path: Path) -> None:
    factory = FakeFactory()
    engine = RoutingEngine(
        default=ThreadPoolEngine(ThreadPoolEngineConfig(max_workers=1)),
        factory=factory,
        settings=RoutingSettings(max_warm=1),
    )
    results = Results()
    engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
    subs = [with_image(nap, 0.1, image=image) for image in ("a:1", "b:1", "a:1")]
    for sub in subs:
        engine.submit(sub)
    engine.shutdown(wait=True)
    assert len(results.by_id) == 3 and not results.duplicates
    assert all(pool.stopped.is_set() for pool in factory.pools)


def test_engines_without_routing_answer_container_image_clearly(tmp_path: Path) -> None:
    engine = ThreadPoolEngine(ThreadPoolEngineConfig(max_workers=1))
    results = Results()
    engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
    sub = with_image(add, 1, image="a:1")
    engine.submit(sub)
    (result,) = results.wait(sub.task_id)
    assert result.error_details is not None
    assert result.error_details["code"] == "ContainerImageNotAllowed"
    assert "container_routing" in result.data
    engine.shutdown()


def test_pools_still_starting_at_shutdown_are_stopped_too(tmp_path: Path) -> None:
    factory = FakeFactory(delay=0.3)
    engine = RoutingEngine(
        default=ThreadPoolEngine(ThreadPoolEngineConfig(max_workers=1)),
        factory=factory,
        settings=RoutingSettings(mode="hard", images=("a:1", "b:1")),
    )
    engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=Results())
    engine.shutdown(wait=True)
    assert len(factory.pools) == 2
    assert all(pool.stopped.wait(5) for pool in factory.pools)
