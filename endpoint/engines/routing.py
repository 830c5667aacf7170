"""RoutingEngine: tasks that name a container image run in warm pools of that image.

A task names its image with the SDK's ``resource_specification``::

    Executor(endpoint_id=EP, resource_specification={"container_image": "my/image:1.2"})

Tasks without ``container_image`` (or naming the default pool's own ``container_uri``) run on
the *default pool*: the engine exactly as configured. Every other image gets a *pool* that is
another instance of the same engine type with that image as its ``container_uri``:

* GlobusComputeEngine: one Parsl block (``init_blocks = min_blocks = max_blocks = 1`` on the
  configured provider) whose worker pool runs in the container, ``container_workers`` workers;
* ProcessPoolEngine: ``container_workers`` worker processes, each in its own container.

So pools are ordinary engines with their retries, batching, version checks and clean
shutdown; this module only decides which pool runs what (`endpoint.containers.router`) and
carries the decisions out. ``container_image`` is removed from the specification before a
pool sees it (GlobusComputeEngine still honours ``priority``).

Threads: decisions are taken under one lock by whichever thread brings news (a submit, a
Result from a pool, a pool that finished starting, the idle timer) and carried out after the
lock is released. Cold starts and retirements run on their own short-lived threads, because
starting a container or draining a pool takes a while.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from endpoint.config.containers import ContainerSettings
from endpoint.config.engines import EngineConfig
from endpoint.config.htex import ParslEngineConfig
from endpoint.containers.codes import CODE_CONTAINER_FAILED, CONTAINER_IMAGE_KEY
from endpoint.containers.router import (
    Action,
    Dispatch,
    Refuse,
    RetirePool,
    Router,
    RoutingSettings,
    StartPool,
)
from endpoint.containers.spec import check_image
from endpoint.engines.base import (
    CODE_RESOURCE_SPEC,
    Engine,
    Failure,
    ResultCallback,
    TaskEngine,
    TaskSubmission,
    engine_error_result,
)
from endpoint.errors import ConfigError, LifecycleError

log = logging.getLogger(__name__)

#: How long a cold start may take before its tasks are answered with an error.
POOL_READY_TIMEOUT_S = 300.0
#: How often idle pools are looked for.
TICK_S = 1.0
#: Routed tasks the endpoint hands over beyond the default pool's own share: the router
#: can only group tasks by image if it sees them.
ROUTER_LOOKAHEAD = 1024


def routing_settings(config: EngineConfig) -> tuple[RoutingSettings, int] | None:
    """(settings, workers per pool) from a validated engine model; None: no routing.

    The model has checked the routing keys (`endpoint.config.containers.routing_issues`).
    """
    if not isinstance(config, ContainerSettings) or config.container_routing is None:
        return None
    settings = RoutingSettings(
        mode=config.container_routing,
        max_warm=config.max_warm_containers,
        max_idletime=config.container_max_idletime,
        images=tuple(dict.fromkeys(config.container_images or [])),
    )
    return settings, config.container_workers


@dataclass
class PoolFactory:
    """Builds the engine for one image pool from the configured engine's model."""

    engine_cls: type[TaskEngine]
    config: EngineConfig
    workers: int

    @property
    def default_image(self) -> str | None:
        return getattr(self.config, "container_uri", None)

    def build(self, image: str, pool_id: str) -> Engine:
        label = self.config.label or self.engine_cls.__name__
        # Validated once, as a whole: only the pool's image, label and size differ.
        update: dict[str, Any] = {
            "container_uri": image,
            "label": f"{label}-{pool_id}",
            "container_routing": None,
        }
        if isinstance(self.config, ParslEngineConfig):
            # Exactly one block, kept while the pool lives: the router retires pools, not
            # Parsl's idle scale-in.
            blocks = {"init_blocks": 1, "min_blocks": 1, "max_blocks": 1}
            update["provider"] = {**self.config.provider, **blocks}
            update["htex_options"] = {
                **self.config.htex_options,
                "max_workers_per_node": self.workers,
            }
        else:
            update["max_workers"] = self.workers
        return self.engine_cls(self.config.model_copy(update=update))


def split_image(task: TaskSubmission) -> tuple[str | None, TaskSubmission, str | None]:
    """(image, the task without it, problem): the routing key comes out of the spec."""
    spec = dict(task.resource_specification or {})
    if CONTAINER_IMAGE_KEY not in spec:
        return None, task, None
    image = spec.pop(CONTAINER_IMAGE_KEY)
    cleaned = replace(task, resource_specification=spec or None)
    if not isinstance(image, str):
        return None, cleaned, f"{CONTAINER_IMAGE_KEY} must be an image name, got {image!r}"
    try:
        return check_image(image.strip()), cleaned, None
    except ConfigError as e:
        return None, cleaned, f"{CONTAINER_IMAGE_KEY}: {e}"


class RoutingEngine(Engine):
    """A default engine plus per-image pools chosen by soft or hard routing."""

    def __init__(self, *, default: Engine, factory: PoolFactory, settings: RoutingSettings):
        self.default = default
        self.factory = factory
        self.settings = settings
        self.label = f"{getattr(default, 'label', type(default).__name__)}-routing"
        self._router: Router[TaskSubmission] = Router(settings)
        self._lock = threading.Condition()
        self._engines: dict[str, Engine] = {}
        self._workers: list[threading.Thread] = []  # cold starts and retirements
        self._workers_lock = threading.Lock()
        self._tick_stop = threading.Event()
        self._on_result: ResultCallback | None = None
        self._start_args: dict[str, Any] = {}
        self._closed = False

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self, *, endpoint_id: str, run_dir: Path, on_result: ResultCallback) -> None:
        if self._on_result is not None:
            raise LifecycleError(f"{self.label} is already started")
        self._on_result = on_result
        self._start_args = {"endpoint_id": endpoint_id, "run_dir": run_dir}
        self.default.start(endpoint_id=endpoint_id, run_dir=run_dir, on_result=on_result)
        with self._lock:
            actions = self._router.start_static(time.monotonic())
        self._execute(actions)
        self._spawn(self._tick_forever, "tick")
        log.info(
            "%s: %s routing, up to %d pools of %d worker(s)",
            self.label,
            self.settings.mode,
            self.settings.budget,
            self.factory.workers,
        )

    def submit(self, task: TaskSubmission) -> None:
        if self._on_result is None or self._closed:
            raise LifecycleError(f"{self.label} is not running")
        image, cleaned, problem = split_image(task)
        if problem is not None:
            self._refuse(cleaned, CODE_RESOURCE_SPEC, problem)
            return
        if image is None or image == self.factory.default_image:
            self.default.submit(cleaned)
            return
        with self._lock:
            actions = self._router.submit(cleaned, image, time.monotonic())
        self._execute(actions)

    def shutdown(self, *, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            if wait:
                # Tasks already routed still run; pools go once nothing waits or runs.
                self._lock.wait_for(lambda: not self._router.busy())
            dropped = self._router.take_waiting()
            actions = self._router.retire_all()
        self._tick_stop.set()
        if dropped:
            log.info("%s: %d routed task(s) dropped at shutdown", self.label, len(dropped))
        self._execute(actions, wait=wait)
        self.default.shutdown(wait=wait)
        with self._workers_lock:
            threads = list(self._workers)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=None if wait else 1.0)

    # ---- status ------------------------------------------------------------------------

    def inflight_target(self) -> int:
        return self.default.inflight_target() + ROUTER_LOOKAHEAD

    def status(self) -> dict[str, Any]:
        with self._lock:
            routing = self._router.snapshot(time.monotonic())
        routing["workers_per_pool"] = self.factory.workers
        return {**self.default.status(), "containers": routing}

    def failure(self) -> Failure | None:
        # The default pool is the engine the runtime built; image pools are replaced here.
        return self.default.failure()

    def wait_ready(self, timeout: float) -> bool:
        return self.default.wait_ready(timeout)

    # ---- carrying out decisions --------------------------------------------------------

    def _execute(self, actions: list[Action[TaskSubmission]], wait: bool = True) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                self._dispatch(action.pool_id, action.item)
            elif isinstance(action, Refuse):
                self._refuse(action.item, action.code, action.message)
            elif isinstance(action, StartPool):
                self._spawn(functools.partial(self._cold_start, action), action.pool_id)
            elif isinstance(action, RetirePool):
                self._retire(action, wait)

    def _dispatch(self, pool_id: str, task: TaskSubmission) -> None:
        with self._lock:
            engine = self._engines.get(pool_id)
        try:
            if engine is None:
                raise LifecycleError(f"pool {pool_id} is gone")
            engine.submit(task)
        except Exception as e:  # the pool shut down under us: still answer the task
            log.warning("%s: %s refused task %s: %s", self.label, pool_id, task.task_id, e)
            self._refuse(task, CODE_CONTAINER_FAILED, f"the container pool failed: {e}")
            self._pool_result_bookkeeping(pool_id)

    def _refuse(self, task: TaskSubmission, code: str, message: str) -> None:
        endpoint_id = str(self._start_args.get("endpoint_id", ""))
        self._deliver(task.task_id, engine_error_result(task.task_id, code, message, endpoint_id))

    def _deliver(self, task_id: str, packed: bytes) -> None:
        callback = self._on_result
        if callback is None:
            return
        try:
            callback(task_id, packed)
        except Exception:
            log.exception("%s: result callback failed for task %s", self.label, task_id)

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=f"{self.label}-{name}", daemon=True)
        with self._workers_lock:
            self._workers = [t for t in self._workers if t.is_alive()]
            self._workers.append(thread)
        thread.start()

    def _cold_start(self, action: StartPool) -> None:
        engine, failure = self._start_pool(action)
        now = time.monotonic()
        with self._lock:
            if self._router.pool(action.pool_id) is None:
                # Retired while it started (a shutdown): nobody will ever use or stop it.
                orphan, actions = engine, []
            elif failure is None and engine is not None:
                self._engines[action.pool_id] = engine
                actions = self._router.pool_ready(action.pool_id, engine.inflight_target(), now)
                orphan = None
            else:
                failure = failure or Failure(CODE_CONTAINER_FAILED, "unknown failure")
                code, message = failure.code, failure.reason
                actions = self._router.pool_failed(action.pool_id, code, message, now)
                orphan = engine
            self._lock.notify_all()
        if orphan is not None:
            orphan.shutdown(wait=False)  # it never received a task
        self._execute([a for a in actions if not _retires(a, action.pool_id)])

    def _start_pool(self, action: StartPool) -> tuple[Engine | None, Failure | None]:
        began = time.monotonic()
        engine: Engine | None = None
        try:
            engine = self.factory.build(action.image, action.pool_id)
            on_result = functools.partial(self._pool_result, action.pool_id)
            engine.start(**self._start_args, on_result=on_result)
            ready = engine.wait_ready(POOL_READY_TIMEOUT_S)
        except Exception as e:
            log.warning("%s: cannot start a pool for %s: %s", self.label, action.image, e)
            why = f"cannot start a pool for {action.image}: {e}"
            return engine, Failure(CODE_CONTAINER_FAILED, why)
        failure = engine.failure()
        if failure is None and not ready:
            failure = Failure(
                CODE_CONTAINER_FAILED,
                f"the pool for {action.image} was not ready within {POOL_READY_TIMEOUT_S:g} s",
            )
        if failure is None:
            log.info(
                "%s: %s ready for %s in %.2f s",
                self.label,
                action.pool_id,
                action.image,
                time.monotonic() - began,
            )
        return engine, failure

    def _pool_result(self, pool_id: str, task_id: str, packed: bytes) -> None:
        self._deliver(task_id, packed)
        self._pool_result_bookkeeping(pool_id)

    def _pool_result_bookkeeping(self, pool_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            engine = self._engines.get(pool_id)
            actions = self._router.finished(pool_id, now)
            failure = engine.failure() if engine is not None else None
            if failure is not None:  # the pool broke while running: replace it on demand
                actions += self._router.pool_failed(pool_id, failure.code, failure.reason, now)
            self._lock.notify_all()
        self._execute(actions)

    def _retire(self, action: RetirePool, wait: bool) -> None:
        with self._lock:
            engine = self._engines.pop(action.pool_id, None)
        if engine is None:
            return
        log.info(
            "%s: retiring %s (%s, %s)", self.label, action.pool_id, action.image, action.reason
        )
        graceful = wait and action.reason != "failed"
        self._spawn(functools.partial(engine.shutdown, wait=graceful), f"retire-{action.pool_id}")

    def _tick_forever(self) -> None:
        while not self._tick_stop.wait(TICK_S):
            with self._lock:
                actions = self._router.tick(time.monotonic())
            self._execute(actions)


def _retires(action: Action[TaskSubmission], pool_id: str) -> bool:
    # A pool that failed to start is shut down by its starter thread, not retired again.
    return isinstance(action, RetirePool) and action.pool_id == pool_id


def build_routing_engine(cls: type[TaskEngine], config: EngineConfig) -> Engine:
    """The configured engine, wrapped in a RoutingEngine when ``config`` asks for one.

    With routing, ``container_type`` (and ``container_cmd_options``) describe how every
    image pool runs; ``container_uri`` is optional and, when given, puts the default pool
    in that image too.
    """
    found = routing_settings(config)
    if found is None:
        return cls(config)
    default = config
    if not getattr(config, "container_uri", None):
        # No default image: tasks without container_image run outside containers.
        outside = {"container_type": None, "container_cmd_options": None}
        default = config.model_copy(update=outside)
    settings, workers = found
    factory = PoolFactory(cls, config, workers)
    return RoutingEngine(default=cls(default), factory=factory, settings=settings)


__all__ = ["PoolFactory", "RoutingEngine", "build_routing_engine", "split_image"]
