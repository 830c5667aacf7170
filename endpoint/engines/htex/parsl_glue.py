"""The few places where GlobusComputeEngine adjusts Parsl's own classes.

Importing this module imports Parsl (about half a second), so `endpoint.engines.htex.engine`
imports it only when a GlobusComputeEngine is built, never on the way to a thread or
process engine.

* `EngineExecutor` / `EngineMPIExecutor`: HTEX (or its MPI flavour) that
  - reports the engine's *task* backlog from ``outstanding()``, so Parsl's scaling strategy
    sees every queued task even though the engine batches them and holds some back;
  - bounds every interchange command with a timeout: Parsl waits forever for a dead
    interchange, which would hang the scaling thread and, with it, shutdown.
* `GatedPoller`: a JobStatusPoller whose first poll waits until the executor is attached.
  Parsl's timer polls once the moment it is built, before ``add_executors`` can run, so the
  ``init_blocks`` would otherwise start a whole ``strategy_period`` late.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

from parsl.executors import HighThroughputExecutor, MPIExecutor
from parsl.executors.errors import BadStateException
from parsl.executors.high_throughput.errors import (
    CommandClientBadError,
    CommandClientTimeoutError,
    ManagerLost,
    WorkerLost,
)
from parsl.jobs.job_status_poller import JobStatusPoller
from parsl.jobs.states import JobState
from parsl.utils import Timer

#: An interchange that does not answer a command in this long is considered broken.
COMMAND_TIMEOUT_S = 30.0

#: Block states that still count as capacity (queued in the batch system or running).
LIVE_BLOCK_STATES = frozenset({JobState.PENDING, JobState.RUNNING})


class _EngineAware:
    """Mixin for HTEX subclasses; see the module docstring."""

    command_client: Any  # set by HighThroughputExecutor.start()
    engine_outstanding: Callable[[], int] | None = None
    #: job_status_kwargs.status_polling_interval: ask the provider this often instead.
    poll_interval_override: float | None = None

    #: The engine's block breaker; replaces Parsl's block_error_handler when set.
    block_check: Callable[[dict[str, Any]], None] | None = None

    def handle_errors(self, status: dict[str, Any]) -> None:
        # Called by the poller after each status poll and before it scales: a breaker that
        # trips here sets the bad state before the strategy can submit one more block.
        if self.block_check is not None:
            self.block_check(status)
        else:
            super().handle_errors(status)  # type: ignore[misc]

    @property
    def status_polling_interval(self) -> float:
        if self.poll_interval_override is not None:
            return self.poll_interval_override
        provider = getattr(self, "_provider", None)
        return 0 if provider is None else float(provider.status_polling_interval)

    def outstanding(self) -> int:
        if self.engine_outstanding is not None:
            return self.engine_outstanding()
        return len(self.tasks)  # type: ignore[attr-defined]

    def connected_managers(self) -> list[dict[str, Any]]:
        managers: list[dict[str, Any]] = self.command_client.run(
            "MANAGERS", timeout_s=COMMAND_TIMEOUT_S
        )
        return managers

    def connected_managers_packages(self) -> dict[str, dict[str, str]]:
        packages: dict[str, dict[str, str]] = self.command_client.run(
            "MANAGERS_PACKAGES", timeout_s=COMMAND_TIMEOUT_S
        )
        return packages

    def connected_blocks(self) -> list[str]:
        blocks: list[str] = self.command_client.run("CONNECTED_BLOCKS", timeout_s=COMMAND_TIMEOUT_S)
        return blocks


class EngineExecutor(_EngineAware, HighThroughputExecutor):
    parsl_name = "HighThroughputExecutor"


class EngineMPIExecutor(_EngineAware, MPIExecutor):
    parsl_name = "MPIExecutor"


class GatedPoller(JobStatusPoller):
    """Parsl's JobStatusPoller, attached to one executor before its first poll."""

    def __init__(self, executor: HighThroughputExecutor, **kwargs: Any) -> None:
        self._attached = threading.Event()
        super().__init__(**kwargs)
        self.add_executors([executor])
        self._attached.set()

    def poll(self) -> None:
        self._attached.wait()
        super().poll()

    def stop_timer(self, timeout: float | None = None) -> None:
        """Stop polling without `close`'s scale-in, which needs a live interchange."""
        Timer.close(self, timeout)


def block_states(executor: HighThroughputExecutor) -> dict[str, int]:
    """How many blocks are in each state, from the poller's last look (no provider call)."""
    counts: dict[str, int] = {}
    for status in list(executor.status_facade.values()):
        counts[status.state.name] = counts.get(status.state.name, 0) + 1
    return counts


def expected_slots(executor: HighThroughputExecutor) -> int:
    """Worker slots the live (pending or running) blocks should bring, at least one."""
    per_node = executor.workers_per_node
    per_node = 1 if per_node == float("inf") else int(per_node)
    states = list(executor.status_facade.values())
    blocks = max(1, sum(1 for s in states if s.state in LIVE_BLOCK_STATES))
    nodes = executor.provider.nodes_per_block if executor.provider else 1
    return max(1, per_node * nodes * blocks)


def unfinished_jobs(executor: HighThroughputExecutor) -> list[Any]:
    """Provider job ids of the blocks not known to have ended."""
    states = dict(executor.status_facade)
    return [
        job_id
        for block_id, job_id in list(executor.blocks_to_job_id.items())
        if block_id not in states or not states[block_id].terminal
    ]


def is_command_failure(exc: BaseException) -> bool:
    """The interchange did not answer a command in time (Parsl then refuses all others)."""
    return isinstance(exc, CommandClientTimeoutError | CommandClientBadError)


def is_bad_state(exc: BaseException) -> bool:
    return isinstance(exc, BadStateException)


def is_lost_worker(exc: BaseException) -> bool:
    """A worker or a whole manager (node) vanished: a system failure worth retrying."""
    return isinstance(exc, WorkerLost | ManagerLost)


def describe(exc: BaseException) -> str:
    """An attempt's reason: the exception line first, then its traceback.

    The frames of the engine's own result handling (the future, our callback, Parsl's
    re-raise) are left out: they are the same every time and hide where it happened.
    """
    summary = "".join(traceback.format_exception_only(exc)).strip()
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if not f.filename.endswith(_LOCAL_FRAMES)]
    )
    trace = "".join(te.format()).rstrip()
    return f"{summary}\n{trace}"


#: Files whose frames `describe` drops (all on the endpoint side of a Parsl future).
_LOCAL_FRAMES = (
    "concurrent/futures/_base.py",
    "endpoint/engines/htex/engine.py",
    "parsl/app/errors.py",
    "parsl/executors/high_throughput/executor.py",
)
