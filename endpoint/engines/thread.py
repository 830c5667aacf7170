"""ThreadPoolEngine: tasks run on threads of the endpoint process itself.

Cheap and good for I/O-bound functions, but tasks share the process: its working directory
and environment (see `endpoint.worker.execute`), and a task that crashes the interpreter
takes the endpoint with it. There are no "system failures" to retry here.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from endpoint.engines.base import (
    CODE_ENGINE_FAILURE,
    PoolEngine,
    ResultCallback,
    TaskSubmission,
    engine_error_result,
)
from endpoint.errors import LifecycleError
from endpoint.worker.execute import execute_task

if TYPE_CHECKING:
    from endpoint.config.engines import ThreadPoolEngineConfig

log = logging.getLogger(__name__)


def default_thread_workers() -> int:
    """Python's own ThreadPoolExecutor default."""
    return min(32, (os.cpu_count() or 1) + 4)


class ThreadPoolEngine(PoolEngine):
    def __init__(self, config: ThreadPoolEngineConfig) -> None:
        workers = config.max_workers
        super().__init__(
            config, max_workers=default_thread_workers() if workers is None else workers
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pending = 0
        self._running = 0

    def start(self, *, endpoint_id: str, run_dir: Path, on_result: ResultCallback) -> None:
        self._prepare(endpoint_id, run_dir, on_result)
        self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix=f"{self.label}-task")

    def submit(self, task: TaskSubmission) -> None:
        self._check_open()
        assert self._pool is not None  # set by start(), which _check_open verified
        refusal = self._refusal(task)
        with self._lock:
            self._pending += 1
        try:
            self._pool.submit(self._run, task, refusal)
        except RuntimeError as e:  # the pool is shutting down
            with self._lock:
                self._pending -= 1
            raise LifecycleError(f"{self.label} is shut down") from e

    def _run(self, task: TaskSubmission, refusal: bytes | None) -> None:
        with self._lock:
            self._pending -= 1
            self._running += 1
        try:
            packed = refusal or execute_task(
                task.task_id, task.packed_task, task.result_serializers, self.options
            )
        except BaseException as e:  # execute_task never raises; if it ever does, still answer
            log.exception("%s: task %s crashed its thread", self.label, task.task_id)
            packed = engine_error_result(
                task.task_id, CODE_ENGINE_FAILURE, f"task thread failed: {e!r}", self.endpoint_id
            )
        finally:
            with self._lock:
                self._running -= 1
        self._deliver(task.task_id, packed)

    def inflight_target(self) -> int:
        # The pool's queue is shared by its threads (the first free one takes the next task),
        # so tasks waiting here never wait behind a busy worker: a deeper window only lets the
        # endpoint's loop handle results, acks and journal writes in larger batches (a deep
        # queue of no-ops cost ~0.45 CPU s per 1,000 tasks with 4 in flight, ~0.36 with 16).
        # The cost: after a crash, every task handed over counts as started (EndpointInterrupted).
        return max(16, 8 * self.max_workers)

    def _counts(self) -> tuple[int, int, int]:
        with self._lock:
            return self._pending, self._running, max(0, self.max_workers - self._running)

    def shutdown(self, *, wait: bool = True) -> None:
        self._closed = True
        if self._pool is not None:
            # Queued tasks are dropped when not waiting; running threads cannot be stopped
            # and still deliver their results when they finish.
            self._pool.shutdown(wait=wait, cancel_futures=not wait)
