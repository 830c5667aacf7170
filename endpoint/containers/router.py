"""Routing tasks to warm per-image pools: the decisions only, with no threads and no I/O.

A task that names a container image waits in its image's queue until a pool of that image
takes it. `Router` keeps at most one pool per image and decides, each time something
changes, what the engine should do next; it returns `Action` values and the engine
(`endpoint.engines.routing`) carries them out. Time is passed in, so tests drive it with a
fake clock.

**Soft routing**, for each image with waiting tasks, oldest waiting task first:

1. a *ready* pool of the image with room (fewer tasks in flight than its capacity) gets
   them: a **warm hit** when the pool was ready before the task arrived;
2. a pool of the image that is starting, or busy, keeps them waiting;
3. otherwise, if fewer pools exist than ``max_warm``, a pool is **cold-started**;
4. otherwise the least recently used *idle* pool of another image (nothing in flight,
   nothing waiting) is **evicted** and replaced by a cold start;
5. otherwise the tasks **wait** for a pool to become idle.

Idle pools are retired after ``max_idletime``. Because tasks of one image queue together,
a burst is served image by image: a busy pool keeps its image warm while other images wait
for the next pool that goes idle, so cold starts stay near one per image and burst.

**Hard routing**: a static pool per listed image, started with the engine and never
evicted or retired; tasks for any other image are refused.

A pool that fails to start (missing image, version mismatch, runtime error) answers every
task waiting for its image with the error, and the image is refused for ``failure_ttl``
seconds so that a burst of tasks for a broken image does not cold-start it once per task.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from endpoint.containers.codes import CODE_IMAGE_NOT_ALLOWED

T = TypeVar("T")

Mode = Literal["soft", "hard"]
PoolState = Literal["starting", "ready"]
RetireReason = Literal["evicted", "idle", "failed", "shutdown"]


#: The defaults of ``max_warm_containers``, ``container_max_idletime`` and
#: ``container_workers`` (the config model and the engine builder share them).
DEFAULT_MAX_WARM = 3
DEFAULT_MAX_IDLETIME = 120.0
DEFAULT_POOL_WORKERS = 1


@dataclass(frozen=True)
class RoutingSettings:
    mode: Mode = "soft"
    #: Most pools alive at once (soft); hard routing has one per listed image.
    max_warm: int = DEFAULT_MAX_WARM
    #: Seconds an idle pool stays warm (soft).
    max_idletime: float = DEFAULT_MAX_IDLETIME
    #: Hard: the static pools. Soft: the images allowed (empty: any image).
    images: tuple[str, ...] = ()
    #: Seconds a failed image is refused before it may be tried again.
    failure_ttl: float = 30.0

    @property
    def budget(self) -> int:
        return len(self.images) if self.mode == "hard" else self.max_warm


@dataclass
class Pool:
    pool_id: str
    image: str
    started_at: float
    state: PoolState = "starting"
    static: bool = False
    ready_at: float | None = None
    last_used: float = 0.0
    capacity: int = 1
    inflight: int = 0
    served: int = 0


@dataclass
class _Waiting(Generic[T]):
    item: T
    image: str
    arrived: float
    counted_wait: bool = False


@dataclass(frozen=True)
class Dispatch(Generic[T]):
    pool_id: str
    item: T
    warm: bool


@dataclass(frozen=True)
class StartPool:
    pool_id: str
    image: str


@dataclass(frozen=True)
class RetirePool:
    pool_id: str
    image: str
    reason: RetireReason


@dataclass(frozen=True)
class Refuse(Generic[T]):
    item: T
    code: str
    message: str


Action = Dispatch[T] | StartPool | RetirePool | Refuse[T]


@dataclass
class Counters:
    tasks: int = 0
    warm_hits: int = 0
    cold_starts: int = 0
    cold_start_seconds: float = 0.0
    evictions: int = 0
    idle_retirements: int = 0
    waits: int = 0
    failed_starts: int = 0
    refused: int = 0

    def as_dict(self) -> dict[str, Any]:
        fields = dict(vars(self))
        fields["cold_start_seconds"] = round(self.cold_start_seconds, 3)
        return fields


@dataclass
class _Failure:
    code: str
    message: str
    until: float


class Router(Generic[T]):
    """The routing state; every method returns the actions the caller must carry out."""

    def __init__(self, settings: RoutingSettings) -> None:
        self.settings = settings
        self.counters = Counters()
        self._pools: dict[str, Pool] = {}
        self._by_image: dict[str, str] = {}  # image -> pool_id
        self._queues: dict[str, deque[_Waiting[T]]] = {}
        self._failed: dict[str, _Failure] = {}
        self._next_id = 0

    # ---- events ------------------------------------------------------------------------

    def start_static(self, now: float) -> list[Action[T]]:
        """Hard routing: a pool for every listed image, at engine start."""
        if self.settings.mode != "hard":
            return []
        return [self._start(image, now, static=True) for image in self.settings.images]

    def submit(self, item: T, image: str, now: float) -> list[Action[T]]:
        self.counters.tasks += 1
        refusal = self._refusal(image, now)
        if refusal is not None:
            self.counters.refused += 1
            return [Refuse(item, *refusal)]
        self._queues.setdefault(image, deque()).append(_Waiting(item, image, now))
        return self._plan(now)

    def finished(self, pool_id: str, now: float) -> list[Action[T]]:
        """A task sent to ``pool_id`` has its Result."""
        pool = self._pools.get(pool_id)
        if pool is not None:
            pool.inflight = max(0, pool.inflight - 1)
            pool.served += 1
            pool.last_used = now
        return self._plan(now)

    def pool_ready(self, pool_id: str, capacity: int, now: float) -> list[Action[T]]:
        pool = self._pools.get(pool_id)
        if pool is None:
            return []
        pool.state, pool.ready_at, pool.last_used = "ready", now, now
        pool.capacity = max(1, capacity)
        self.counters.cold_start_seconds += now - pool.started_at
        return self._plan(now)

    def pool_failed(self, pool_id: str, code: str, message: str, now: float) -> list[Action[T]]:
        """The pool could not start, or stopped working: refuse its image for a while."""
        pool = self._drop(pool_id)
        if pool is None:
            return []
        actions: list[Action[T]] = [RetirePool(pool_id, pool.image, "failed")]
        if pool.state == "starting":
            self.counters.failed_starts += 1
        self._failed[pool.image] = _Failure(code, message, now + self.settings.failure_ttl)
        for waiting in self._queues.pop(pool.image, deque()):
            self.counters.refused += 1
            actions.append(Refuse(waiting.item, code, message))
        return actions + self._plan(now)

    def tick(self, now: float) -> list[Action[T]]:
        """Periodically: retire pools idle for longer than ``max_idletime``."""
        actions: list[Action[T]] = []
        for pool in list(self._pools.values()):
            if pool.static or not self._idle(pool):
                continue
            if now - pool.last_used >= self.settings.max_idletime:
                self._drop(pool.pool_id)
                self.counters.idle_retirements += 1
                actions.append(RetirePool(pool.pool_id, pool.image, "idle"))
        return actions + self._plan(now) if actions else actions

    def retire_all(self) -> list[Action[T]]:
        """Shutdown: every pool goes (waiting tasks, if any, are the caller's to answer)."""
        actions: list[Action[T]] = [
            RetirePool(p.pool_id, p.image, "shutdown") for p in list(self._pools.values())
        ]
        self._pools.clear()
        self._by_image.clear()
        return actions

    def take_waiting(self) -> list[T]:
        """Remove and return every waiting task (shutdown without waiting)."""
        items = [w.item for queue in self._queues.values() for w in queue]
        self._queues.clear()
        return items

    # ---- questions ---------------------------------------------------------------------

    def busy(self) -> bool:
        """Tasks wait or run: a graceful shutdown must not retire pools yet."""
        return bool(self._queues) or any(p.inflight for p in self._pools.values())

    def pool(self, pool_id: str) -> Pool | None:
        return self._pools.get(pool_id)

    def snapshot(self, now: float) -> dict[str, Any]:
        pools = sorted(self._pools.values(), key=lambda p: p.pool_id)
        return {
            "container_routing": self.settings.mode,
            "max_warm_containers": self.settings.budget,
            "warm_pools": sum(1 for p in pools if p.state == "ready"),
            "starting_pools": sum(1 for p in pools if p.state == "starting"),
            "waiting_tasks": sum(len(q) for q in self._queues.values()),
            **self.counters.as_dict(),
            "pools": [_describe(p, now) for p in pools],
            "waiting": {image: len(q) for image, q in self._queues.items()},
        }

    # ---- the policy --------------------------------------------------------------------

    def _refusal(self, image: str, now: float) -> tuple[str, str] | None:
        allowed = self.settings.images
        if allowed and image not in allowed:
            kind = "hard routing runs only" if self.settings.mode == "hard" else "allowed are"
            return (
                CODE_IMAGE_NOT_ALLOWED,
                f"container_image {image!r} is not available on this endpoint ({kind}:"
                f" {', '.join(allowed)})",
            )
        failure = self._failed.get(image)
        if failure is None:
            return None
        if now >= failure.until:
            del self._failed[image]
            return None
        return failure.code, failure.message

    def _plan(self, now: float) -> list[Action[T]]:
        actions: list[Action[T]] = []
        for image in sorted(self._queues, key=lambda i: self._queues[i][0].arrived):
            queue = self._queues[image]
            pool = self._pools.get(self._by_image.get(image, ""))
            if pool is not None:
                if pool.state == "ready":
                    actions += self._dispatch(pool, queue)
            elif len(self._pools) < self.settings.budget:
                actions.append(self._start(image, now))
            elif (victim := self._victim()) is not None:
                self._drop(victim.pool_id)
                self.counters.evictions += 1
                actions.append(RetirePool(victim.pool_id, victim.image, "evicted"))
                actions.append(self._start(image, now))
            else:
                self._count_waits(queue)
            if not queue:
                del self._queues[image]
        return actions

    def _dispatch(self, pool: Pool, queue: deque[_Waiting[T]]) -> list[Action[T]]:
        actions: list[Action[T]] = []
        while queue and pool.inflight < pool.capacity:
            waiting = queue.popleft()
            warm = pool.ready_at is not None and waiting.arrived >= pool.ready_at
            self.counters.warm_hits += warm
            pool.inflight += 1
            actions.append(Dispatch(pool.pool_id, waiting.item, warm))
        return actions

    def _victim(self) -> Pool | None:
        idle = [p for p in self._pools.values() if self._idle(p) and not p.static]
        return min(idle, key=lambda p: p.last_used, default=None)

    def _idle(self, pool: Pool) -> bool:
        return pool.state == "ready" and pool.inflight == 0 and pool.image not in self._queues

    def _count_waits(self, queue: deque[_Waiting[T]]) -> None:
        for waiting in queue:
            if not waiting.counted_wait:
                waiting.counted_wait = True
                self.counters.waits += 1

    def _start(self, image: str, now: float, static: bool = False) -> StartPool:
        self._next_id += 1
        static = static or self.settings.mode == "hard"  # a restarted hard pool stays static
        pool = Pool(f"pool{self._next_id}", image, started_at=now, static=static)
        self._pools[pool.pool_id] = pool
        self._by_image[image] = pool.pool_id
        self.counters.cold_starts += 1
        return StartPool(pool.pool_id, image)

    def _drop(self, pool_id: str) -> Pool | None:
        pool = self._pools.pop(pool_id, None)
        if pool is not None and self._by_image.get(pool.image) == pool_id:
            del self._by_image[pool.image]
        return pool


def _describe(pool: Pool, now: float) -> dict[str, Any]:
    return {
        "pool": pool.pool_id,
        "image": pool.image,
        "state": pool.state,
        "static": pool.static,
        "inflight": pool.inflight,
        "served": pool.served,
        "idle_s": round(now - pool.last_used, 1) if pool.inflight == 0 and pool.ready_at else 0.0,
    }
