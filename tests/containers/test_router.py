"""The routing policy on its own: warm hits, cold starts, LRU eviction, waits, idle
retirement, hard routing, failures and counters. A fake clock; no threads, no containers."""

from __future__ import annotations

from typing import Any

from endpoint.containers.router import (
    Dispatch,
    Refuse,
    RetirePool,
    Router,
    RoutingSettings,
    StartPool,
)

SOFT = RoutingSettings(mode="soft", max_warm=2, max_idletime=10.0)


def kinds(actions: list[Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for a in actions:
        if isinstance(a, Dispatch):
            out.append(("dispatch", a.pool_id, a.item, a.warm))
        elif isinstance(a, StartPool):
            out.append(("start", a.pool_id, a.image))
        elif isinstance(a, RetirePool):
            out.append(("retire", a.pool_id, a.reason))
        else:
            out.append(("refuse", a.item, a.code))
    return out


def ready(router: Router[str], pool_id: str, now: float, capacity: int = 1) -> list[Any]:
    return kinds(router.pool_ready(pool_id, capacity, now))


def test_first_task_cold_starts_and_runs_when_the_pool_is_ready() -> None:
    r: Router[str] = Router(SOFT)
    assert kinds(r.submit("t1", "a", 0.0)) == [("start", "pool1", "a")]
    assert kinds(r.submit("t2", "a", 0.5)) == []  # joins the pool that is starting
    assert ready(r, "pool1", 2.0, capacity=2) == [
        ("dispatch", "pool1", "t1", False),
        ("dispatch", "pool1", "t2", False),
    ]
    c = r.counters
    assert (c.cold_starts, c.warm_hits, c.cold_start_seconds) == (1, 0, 2.0)


def test_a_warm_pool_with_room_takes_the_task() -> None:
    r: Router[str] = Router(SOFT)
    r.submit("t1", "a", 0.0)
    ready(r, "pool1", 1.0)
    assert kinds(r.finished("pool1", 1.5)) == []
    assert kinds(r.submit("t2", "a", 2.0)) == [("dispatch", "pool1", "t2", True)]
    # Full (capacity 1): the next one waits inside the router, not in the pool.
    assert kinds(r.submit("t3", "a", 2.1)) == []
    assert kinds(r.finished("pool1", 3.0)) == [("dispatch", "pool1", "t3", True)]
    assert r.counters.warm_hits == 2 and r.counters.cold_starts == 1


def test_budget_full_evicts_the_least_recently_used_idle_pool() -> None:
    r: Router[str] = Router(SOFT)
    for image, t in (("a", 0.0), ("b", 1.0)):
        r.submit(f"t-{image}", image, t)
    ready(r, "pool1", 2.0)
    ready(r, "pool2", 2.0)
    r.finished("pool2", 3.0)  # b used last...
    r.finished("pool1", 2.5)  # ...a earlier: a is the LRU
    assert kinds(r.submit("t-c", "c", 4.0)) == [
        ("retire", "pool1", "evicted"),
        ("start", "pool3", "c"),
    ]
    assert r.counters.evictions == 1


def test_busy_pools_are_never_evicted_the_task_waits() -> None:
    r: Router[str] = Router(SOFT)
    r.submit("t-a", "a", 0.0)
    r.submit("t-b", "b", 0.0)
    ready(r, "pool1", 1.0)
    ready(r, "pool2", 1.0)
    assert kinds(r.submit("t-c", "c", 2.0)) == []
    assert r.counters.waits == 1
    assert kinds(r.submit("t-c2", "c", 2.1)) == []
    assert r.counters.waits == 2  # each waiting task counted once
    # b finishes: its pool is idle and goes for c.
    assert kinds(r.finished("pool2", 3.0)) == [
        ("retire", "pool2", "evicted"),
        ("start", "pool3", "c"),
    ]
    assert ready(r, "pool3", 4.0, capacity=4) == [
        ("dispatch", "pool3", "t-c", False),
        ("dispatch", "pool3", "t-c2", False),
    ]
    assert r.counters.waits == 2


def test_a_pool_with_waiting_tasks_is_not_idle() -> None:
    r: Router[str] = Router(RoutingSettings(mode="soft", max_warm=1))
    r.submit("a1", "a", 0.0)
    ready(r, "pool1", 1.0)
    r.submit("a2", "a", 1.1)  # queued behind a1 (capacity 1)
    r.submit("b1", "b", 1.2)
    # a1 done: a2 goes next on the warm pool rather than evicting it for b.
    assert kinds(r.finished("pool1", 2.0)) == [("dispatch", "pool1", "a2", True)]
    assert kinds(r.finished("pool1", 3.0)) == [
        ("retire", "pool1", "evicted"),
        ("start", "pool2", "b"),
    ]


def test_images_are_served_oldest_waiting_first() -> None:
    r: Router[str] = Router(RoutingSettings(mode="soft", max_warm=1))
    r.submit("a1", "a", 0.0)
    ready(r, "pool1", 0.5)
    r.submit("c1", "c", 1.0)
    r.submit("b1", "b", 2.0)
    actions = kinds(r.finished("pool1", 3.0))
    assert actions == [("retire", "pool1", "evicted"), ("start", "pool2", "c")]


def test_idle_pools_retire_after_max_idletime() -> None:
    r: Router[str] = Router(SOFT)
    r.submit("t", "a", 0.0)
    ready(r, "pool1", 1.0)
    r.finished("pool1", 2.0)
    assert kinds(r.tick(11.9)) == []
    assert kinds(r.tick(12.0)) == [("retire", "pool1", "idle")]
    assert r.counters.idle_retirements == 1
    assert kinds(r.submit("t2", "a", 13.0)) == [("start", "pool2", "a")]


def test_hard_routing_has_static_pools_and_refuses_other_images() -> None:
    r: Router[str] = Router(RoutingSettings(mode="hard", images=("a", "b"), max_idletime=0.0))
    assert kinds(r.start_static(0.0)) == [("start", "pool1", "a"), ("start", "pool2", "b")]
    ready(r, "pool1", 1.0)
    ready(r, "pool2", 1.0)
    refused = r.submit("t-c", "c", 2.0)
    assert kinds(refused) == [("refuse", "t-c", "ContainerImageNotAllowed")]
    assert isinstance(refused[0], Refuse) and "hard routing runs only: a, b" in refused[0].message
    assert kinds(r.submit("t-a", "a", 2.0)) == [("dispatch", "pool1", "t-a", True)]
    r.finished("pool1", 3.0)
    assert kinds(r.tick(100.0)) == []  # static pools are never retired


def test_soft_allow_list() -> None:
    r: Router[str] = Router(RoutingSettings(mode="soft", images=("a",)))
    assert kinds(r.submit("t", "z", 0.0)) == [("refuse", "t", "ContainerImageNotAllowed")]
    assert r.counters.refused == 1


def test_a_failed_start_answers_waiting_tasks_and_refuses_the_image_for_a_while() -> None:
    r: Router[str] = Router(RoutingSettings(mode="soft", max_warm=2, failure_ttl=30.0))
    r.submit("t1", "gone", 0.0)
    r.submit("t2", "gone", 0.1)
    actions = kinds(r.pool_failed("pool1", "ContainerImageNotFound", "no such image", 1.0))
    assert actions == [
        ("retire", "pool1", "failed"),
        ("refuse", "t1", "ContainerImageNotFound"),
        ("refuse", "t2", "ContainerImageNotFound"),
    ]
    assert kinds(r.submit("t3", "gone", 5.0)) == [("refuse", "t3", "ContainerImageNotFound")]
    assert kinds(r.submit("t4", "gone", 31.5)) == [("start", "pool2", "gone")]
    assert r.counters.failed_starts == 1 and r.counters.refused == 3


def test_snapshot_and_shutdown() -> None:
    r: Router[str] = Router(SOFT)
    r.submit("t1", "a", 0.0)
    r.submit("t2", "b", 0.0)
    r.submit("t3", "c", 0.0)
    ready(r, "pool1", 1.0)
    snap = r.snapshot(2.0)
    assert snap["warm_pools"] == 1 and snap["starting_pools"] == 1
    assert snap["waiting"] == {"b": 1, "c": 1} and snap["waiting_tasks"] == 2
    assert snap["cold_starts"] == 2 and snap["pools"][0]["image"] == "a"
    assert r.busy()
    assert sorted(r.take_waiting()) == ["t2", "t3"]
    assert kinds(r.retire_all()) == [
        ("retire", "pool1", "shutdown"),
        ("retire", "pool2", "shutdown"),
    ]
