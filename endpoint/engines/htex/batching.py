"""Several tasks per Parsl message: the worker-side runner and the batch-size policy.

Parsl's HighThroughputExecutor costs roughly a millisecond of interchange and manager work
per message, while a small Compute task runs in a fraction of that. When tasks queue up,
GlobusComputeEngine therefore sends one Parsl task that runs a *batch* of packed Tasks through
`execute_task` and returns their packed Results. When the queue is shallow every task
travels alone, so batching never adds latency to a lone task.

A batch stops early, handing back the tasks it has not started, once it has run longer than
its time budget or gathered more result bytes than its byte budget. A stale guess about task
length therefore costs at most one task's wait, and the engine resubmits the unstarted rest
(they are not charged an attempt). This module is imported by every Parsl worker, so it
stays light: nothing here imports Parsl.
"""

from __future__ import annotations

import math
import pickle
import time
from dataclasses import dataclass
from typing import Any

from endpoint.worker.execute import WorkerOptions, execute_task

#: The importable name Parsl's worker calls for every batch (``context.task_executor.f``).
RUNNER = f"{__name__}.run_batch"

#: How long a batch should take, going by the measured task length (sizing target).
TARGET_BATCH_S = 0.05
#: A running batch hands back its unstarted tasks after this long.
BATCH_TIME_BUDGET_S = 4 * TARGET_BATCH_S
#: ... or once its results add up to this many bytes (one message must stay reasonable).
BATCH_BYTE_BUDGET = 16 * 1024 * 1024
#: Weight of the newest measurement in the running estimate of task length.
_EWMA_WEIGHT = 0.3

#: One task inside a batch: (task_id, packed Task, result_serializers).
BatchItem = tuple[str, bytes, list[str]]


def encode_batch(items: list[BatchItem]) -> bytes:
    # Parsl hands this buffer to run_batch untouched (only Parsl's own envelope is pickled).
    return pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)


def run_batch(
    buffer: bytes,
    options: dict[str, Any],
    time_budget_s: float = BATCH_TIME_BUDGET_S,
    byte_budget: int = BATCH_BYTE_BUDGET,
) -> tuple[list[bytes], float]:
    """Run a batch in a Parsl worker: (packed Results of the tasks run, seconds spent).

    Results come back in task order; fewer results than tasks means the rest never
    started. At least one task always runs, so every batch makes progress.
    """
    items: list[BatchItem] = pickle.loads(buffer)
    worker_options = WorkerOptions(**options)
    began = time.perf_counter()
    results: list[bytes] = []
    size = 0
    for task_id, packed_task, serializers in items:
        if results and (time.perf_counter() - began > time_budget_s or size > byte_budget):
            break
        packed = execute_task(task_id, packed_task, serializers, worker_options)
        results.append(packed)
        size += len(packed)
    return results, time.perf_counter() - began


@dataclass
class BatchPolicy:
    """Decides how many queued tasks each new Parsl message carries (no I/O, no locks).

    ``max_size`` is the configured ``task_batch_size`` (1 turns batching off). Until a
    task length has been measured only single tasks go out; afterwards the size is the
    smaller of ``max_size`` and what fits in `TARGET_BATCH_S`, and never more than an even
    share of the queue over the free slots, so a shallow queue yields single tasks.
    """

    max_size: int
    task_seconds: float | None = None

    def observe(self, seconds: float, tasks: int) -> None:
        """Fold in a finished batch: ``tasks`` tasks took ``seconds`` in the worker."""
        if tasks <= 0:
            return
        per_task = max(seconds, 0.0) / tasks
        if self.task_seconds is None:
            self.task_seconds = per_task
        else:
            self.task_seconds += _EWMA_WEIGHT * (per_task - self.task_seconds)

    def limit(self) -> int:
        """The most tasks one message may carry right now."""
        if self.max_size <= 1 or self.task_seconds is None:
            return 1
        if self.task_seconds <= 0:
            return self.max_size
        return max(1, min(self.max_size, int(TARGET_BATCH_S / self.task_seconds)))

    def sizes(self, queued: int, free_slots: int) -> list[int]:
        """Batch sizes to send now for ``queued`` waiting tasks and ``free_slots`` room."""
        if queued <= 0 or free_slots <= 0:
            return []
        size = max(1, min(self.limit(), math.ceil(queued / free_slots)))
        sizes: list[int] = []
        while queued > 0 and len(sizes) < free_slots:
            take = min(size, queued)
            sizes.append(take)
            queued -= take
        return sizes
