"""The engine interface, and what the local pool engines (threads, processes) share.

An engine takes packed Task messages and eventually answers each one with exactly one packed
Result through the `ResultCallback` given to `Engine.start`. What a worker does with a task
lives in `endpoint.worker.execute`; engines only move tasks and results around.

Engine-level error codes (the worker's own codes are listed in `endpoint.worker.execute`):

``WorkerLost``
    The worker process died while running the task (``os._exit``, a signal, the OOM killer)
    on every attempt allowed by ``max_retries_on_system_failure``. ``data`` lists each
    attempt's reason.
``ResourceSpecificationNotSupported``
    The task carries a non-empty ``resource_specification``, which local pools cannot honour.
``EngineFailure``
    The engine itself cannot run tasks (for example worker processes fail to start).

Container error codes (workers in containers, `endpoint.containers`):

``ContainerImageNotFound``
    The image is not on this host and pulling it failed (the runtime's reason follows).
``WorkerVersionMismatch``
    The image's Python, container-compute-endpoint, dill (or, for Parsl pools, Parsl) differ
    from the endpoint's; ``data`` names each difference and what to rebuild.
``ContainerStartFailed``
    The runtime is missing, or the container's pool did not become ready.
``ContainerImageNotAllowed``
    The task names an image this endpoint does not run (hard routing, or an allow-list), or
    the engine does not route tasks to containers at all.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from endpoint.containers.codes import CODE_IMAGE_NOT_ALLOWED, CONTAINER_IMAGE_KEY
from endpoint.errors import ConfigError, LifecycleError
from endpoint.protocol.messages import ACTOR_INTERCHANGE, STATE_EXEC_END, Result, pack, transition
from endpoint.protocol.results import env_details
from endpoint.worker.execute import WorkerOptions

if TYPE_CHECKING:
    # Type-only: Parsl's workers import the engines package and need no pydantic models.
    from endpoint.config.engines import EngineConfig

log = logging.getLogger(__name__)

#: (task_id, packed Result); engines may call it from any thread.
ResultCallback = Callable[[str, bytes], None]

CODE_WORKER_LOST = "WorkerLost"
CODE_RESOURCE_SPEC = "ResourceSpecificationNotSupported"
CODE_ENGINE_FAILURE = "EngineFailure"
STATE_WAITING_FOR_LAUNCH = "waiting-for-launch"


@dataclass
class TaskSubmission:
    task_id: str
    packed_task: bytes
    result_serializers: list[str]
    resource_specification: dict[str, Any] | None = None


@dataclass(frozen=True)
class Failure:
    """An engine's failure: the error code its tasks' results carry, and the reason."""

    code: str
    reason: str
    #: Seconds the runtime should wait before it replaces this engine (the block breaker's
    #: back-off); None: replace it at once, within the runtime's restart budget.
    retry_after_s: float | None = None


class Engine(ABC):
    """Runs tasks; every submitted task gets exactly one Result through `on_result`."""

    def inflight_target(self) -> int:
        """How many tasks the endpoint should keep submitted to this engine.

        Two per worker keeps every worker busy while results travel back; engines that group
        tasks (GlobusComputeEngine's batches) want more. Re-read as workers come and go.
        """
        return max(4, 2 * int(self.status().get("total_workers") or 1))

    @abstractmethod
    def start(self, *, endpoint_id: str, run_dir: Path, on_result: ResultCallback) -> None:
        """Get ready to run tasks; `run_dir` is the endpoint directory."""

    def wait_ready(self, timeout: float) -> bool:
        """Wait (after `start`) until a worker can take a task or the engine has failed.

        False when ``timeout`` passed first. Engines whose workers start synchronously are
        ready at once.
        """
        return True

    def failure(self) -> Failure | None:
        """Why this engine can no longer run tasks (its interchange died, every block failed,
        its container's worker never answered), or None while it can.

        The one way to ask: the runtime replaces a failed engine with a fresh one (within a
        restart budget), a `RoutingEngine` replaces a failed pool. Wrappers forward it.
        """
        return None

    @abstractmethod
    def submit(self, task: TaskSubmission) -> None:
        """Queue a task; never blocks long. Its Result arrives via `on_result` exactly once."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """The engine part of a heartbeat's ``global_state``; callable before `start`."""

    @abstractmethod
    def shutdown(self, *, wait: bool = True) -> None:
        """Stop. ``wait=True`` first finishes every submitted task (delivering its Result);
        ``wait=False`` returns at once and unfinished tasks get no Result."""


def engine_error_result(
    task_id: str,
    code: str,
    message: str,
    endpoint_id: str,
    launched_ns: int | None = None,
    user_message: str | None = None,
) -> bytes:
    """A packed error Result decided by the engine rather than by a worker.

    ``message`` is the full text (``data``); ``user_message`` a shorter one for
    ``error_details`` when the full text carries tracebacks.
    """
    end = transition(STATE_EXEC_END, ACTOR_INTERCHANGE)
    statuses = [end]
    if launched_ns is not None:
        launched = {**end, "timestamp": launched_ns, "state": STATE_WAITING_FOR_LAUNCH}
        statuses.insert(0, launched)
    return pack(
        Result(
            task_id=task_id,
            data=f"{code}: {message}\n",
            details=env_details(endpoint_id),
            error_details={"code": code, "user_message": user_message or message},
            task_statuses=statuses,
        )
    )


def container_refusal(task: TaskSubmission, engine: str, endpoint_id: str) -> bytes:
    """The error Result for a task naming a container image an engine does not route."""
    spec = task.resource_specification or {}
    return engine_error_result(
        task.task_id,
        CODE_IMAGE_NOT_ALLOWED,
        f"{CONTAINER_IMAGE_KEY} {spec.get(CONTAINER_IMAGE_KEY)!r}: this endpoint's {engine}"
        " does not run tasks in per-task containers; its administrator can enable it with"
        " engine.container_routing (soft or hard) and engine.container_type",
        endpoint_id,
    )


def attempts_report(
    what: str, attempts: list[str], max_retries: int, *, details: bool = True
) -> str:
    """The text of a final system-failure Result: one entry per attempt, oldest first.

    Each attempt's reason is a summary line, optionally followed by detail lines (a
    traceback) indented under it; ``details=False`` keeps only the summaries.
    """
    lines = [
        f"{what} on all {len(attempts)} attempt(s) (max_retries_on_system_failure={max_retries}):"
    ]
    for n, reason in enumerate(attempts, 1):
        head, _, rest = reason.strip().partition("\n")
        lines.append(f"  attempt {n}: {head}")
        if details:
            lines += [f"    {line}" for line in rest.splitlines()]
    return "\n".join(lines)


def available_mem_gib() -> float:
    """Memory available for new work, in GiB (MemAvailable, which counts reclaimable cache)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    except (OSError, ValueError, AttributeError):
        return 0.0


class TaskEngine(Engine):
    """Configuration and bookkeeping every engine shares: the task working directory,
    sandboxing, the serializer allowlist, retries and the result size limit.

    ``config`` is the validated engine model (`endpoint.config.engines`): its fields are
    already checked and carry the defaults, so nothing is checked or defaulted here.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.label = config.label or type(self).__name__
        self.working_dir = Path(config.working_dir)
        self.run_in_sandbox = config.run_in_sandbox
        serializers = config.allowed_serializers
        self.allowed_serializers = None if serializers is None else tuple(serializers)
        self.max_retries = config.max_retries_on_system_failure
        self.result_size_limit = config.result_size_limit
        self.endpoint_id = ""
        self._on_result: ResultCallback | None = None
        self._options: WorkerOptions | None = None
        self._lock = threading.Lock()
        self._closed = False

    # ---- lifecycle helpers -------------------------------------------------------------

    def _prepare(self, endpoint_id: str, run_dir: Path, on_result: ResultCallback) -> None:
        if self._options is not None:
            raise LifecycleError(f"{self.label} is already started")
        task_dir = self.working_dir
        if not task_dir.is_absolute():
            task_dir = Path(run_dir) / task_dir
        task_dir = task_dir.resolve()
        try:
            task_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"working_dir {task_dir} cannot be created: {e}") from e
        self.endpoint_id = str(endpoint_id)
        self._on_result = on_result
        self._options = WorkerOptions(
            endpoint_id=self.endpoint_id,
            run_dir=str(task_dir),
            run_in_sandbox=self.run_in_sandbox,
            allowed_serializers=self.allowed_serializers,
            result_size_limit=self.result_size_limit,
        )

    @property
    def options(self) -> WorkerOptions:
        if self._options is None:
            raise LifecycleError(f"{self.label} is not started")
        return self._options

    def _check_open(self) -> None:
        if self._options is None:
            raise LifecycleError(f"{self.label} is not started; call start() first")
        if self._closed:
            raise LifecycleError(f"{self.label} is shut down")

    def _deliver(self, task_id: str, packed: bytes) -> None:
        callback = self._on_result
        if callback is None:  # unreachable after start(); keeps mypy and us honest
            log.error("%s: result for %s before start(); dropped", self.label, task_id)
            return
        try:
            callback(task_id, packed)
        except Exception:
            # A failing consumer must not kill the engine thread that found the result.
            log.exception("%s: result callback failed for task %s", self.label, task_id)


class PoolEngine(TaskEngine):
    """Status and refusals shared by the thread and process engines."""

    def __init__(self, config: EngineConfig, *, max_workers: int) -> None:
        """``max_workers``: the model's, or the engine's own default where it leaves it None."""
        self.max_workers = max_workers
        super().__init__(config)

    def _refusal(self, task: TaskSubmission) -> bytes | None:
        """An error Result for a task this engine cannot run, or None."""
        if not task.resource_specification:
            return None
        if CONTAINER_IMAGE_KEY in task.resource_specification:
            return container_refusal(task, type(self).__name__, self.endpoint_id)
        keys = ", ".join(sorted(map(str, task.resource_specification)))
        return engine_error_result(
            task.task_id,
            CODE_RESOURCE_SPEC,
            f"resource_specification is not supported by {type(self).__name__}"
            f" (got: {keys}); use an engine that schedules resources, such as"
            " GlobusComputeEngine or GlobusMPIEngine",
            self.endpoint_id,
        )

    # ---- status ------------------------------------------------------------------------

    @abstractmethod
    def _counts(self) -> tuple[int, int, int]:
        """(pending, running, idle_workers) right now."""

    def status(self) -> dict[str, Any]:
        pending, running, idle = self._counts()
        return {
            "total_cores": os.cpu_count() or 1,
            "total_mem": available_mem_gib(),
            "total_core_hrs": 0,
            "total_workers": self.max_workers,
            "pending_tasks": pending,
            "outstanding_tasks": pending + running,
            "idle_workers": idle,
            "scaling_enabled": False,
            "max_blocks": 1,
            "min_blocks": 1,
            "max_workers_per_node": self.max_workers,
            "nodes_per_block": 1,
            "engine_type": type(self).__name__,
        }
