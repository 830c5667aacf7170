"""GlobusComputeEngine's watcher thread, and the status report built from what it sees.

Twice a second the watcher asks the interchange which worker pools (managers) are
connected, so that `status` and the dispatcher only read a snapshot, and it turns an
interchange that died or stopped answering into Parsl's bad state (Parsl alone would wait
for it forever). For pools in containers it also gives up on a version probe that a
connected pool never answers.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from endpoint.containers.codes import CODE_VERSION_MISMATCH
from endpoint.containers.spec import ContainerSpec
from endpoint.engines.base import (
    CODE_ENGINE_FAILURE,
)
from endpoint.engines.htex import containers as htex_containers
from endpoint.engines.htex import status as htex_status

log = logging.getLogger(__name__)

#: How often the watcher refreshes managers and checks the interchange is alive.
REFRESH_S = 0.5


class WatcherMixin:
    """The watcher and status half of `endpoint.engines.htex.engine.GlobusComputeEngine`.

    Its state lives in the engine; the annotations below name what this half reads.
    """

    label: str
    executor: Any
    scaling: dict[str, Any]
    task_batch_size: int
    _queue: list[Any]
    _broken: str | None
    _batches: dict[int, Any]
    _outstanding: int
    _submitted: int
    container: ContainerSpec | None
    _cond: threading.Condition
    _watch_stop: threading.Event
    _parsl_stopped: bool
    _managers: list[dict[str, Any]]
    _packages: dict[str, dict[str, str | None]]
    _capacity: int
    _verifying: bool
    _containers: htex_containers.ContainerWorkers | None

    _connected_blocks: set[str]
    _manager_blocks: dict[str, str]

    def _mark_broken(self, reason: str, code: str = CODE_ENGINE_FAILURE) -> str:
        raise NotImplementedError

    def _watch(self) -> None:
        from endpoint.engines.htex.parsl_glue import is_command_failure

        while not self._watch_stop.wait(REFRESH_S):
            try:
                self._check_interchange()
                self._refresh_managers()
            except Exception as e:
                if not is_command_failure(e):
                    log.debug("%s: status refresh failed: %s", self.label, e)
                    continue
                # Parsl's command channel is unusable from now on (it never recovers).
                self._interchange_failed(f"the Parsl interchange stopped answering ({e!r})")

    def _check_interchange(self) -> None:
        proc = self.executor.interchange_proc
        code = proc.poll() if proc is not None else None
        if code is not None:
            self._interchange_failed(f"the Parsl interchange exited unexpectedly (code {code})")

    def _interchange_failed(self, reason: str) -> None:
        """Fail what the interchange held (Parsl itself would wait for it forever)."""
        if self.executor.bad_state_is_set or self._parsl_stopped:
            return
        self.executor.set_bad_state_and_fail_all(RuntimeError(reason))
        with self._cond:
            self._cond.notify_all()

    def _refresh_managers(self) -> None:
        if self.executor.bad_state_is_set:
            return
        managers = self.executor.connected_managers()
        for m in managers:
            self._manager_blocks[str(m.get("manager"))] = str(m.get("block_id"))
            self._connected_blocks.add(str(m.get("block_id")))
        unknown = [m["manager"] for m in managers if m["manager"] not in self._packages]
        if unknown:  # a pool's packages never change: ask once per new pool
            packages = self.executor.connected_managers_packages()
            for manager in unknown:
                self._packages[manager] = htex_status.package_versions(packages.get(manager, {}))
        capacity = htex_status.capacity(managers, int(self.executor.prefetch_capacity))
        with self._cond:
            self._managers = managers
            if capacity != self._capacity:
                self._capacity = capacity
                self._cond.notify_all()
            verifying = self._verifying
        if verifying and self._containers and self._containers.probe_overdue(capacity > 0):
            timeout = htex_containers.PROBE_TIMEOUT_S
            self._mark_broken(
                f"{self.label}: the worker in {self.container and self.container.describe()}"
                " did not answer the version"
                f" check within {timeout:g} s of connecting (a Parsl version mismatch?)",
                CODE_VERSION_MISMATCH,
            )

    # ---- status ------------------------------------------------------------------------

    def inflight_target(self) -> int:
        # Enough for a full batch per worker slot twice over, so a deep queue reaches the
        # engine and is sent in batches; the slots count is at least one block's worth even
        # before the first block has connected.
        slots = max(int(self.status().get("total_workers") or 0), self._slots_per_block())
        return max(4, 2 * slots * self.task_batch_size)

    def _slots_per_block(self) -> int:
        per_node = self.status().get("max_workers_per_node")
        nodes = int(self.status().get("nodes_per_block") or 1)
        # Parsl's "unlimited" workers per node means one per core.
        return (int(per_node) if per_node else os.cpu_count() or 1) * nodes

    def status(self) -> dict[str, Any]:
        from endpoint.engines.htex.parsl_glue import block_states

        with self._cond:
            queued = len(self._queue)
            sizes = [len(b.jobs) for b in self._batches.values()]
            outstanding, submitted = self._outstanding, self._submitted
            managers = list(self._managers)
        # Batches leave in order and the interchange hands them out in order, so the oldest
        # are the ones on workers (approximate under priorities or prefetch).
        running = sum(sizes[: sum(int(m["tasks"]) for m in managers)])
        return {
            **htex_status.manager_summary(managers),
            "pending_tasks": queued + sum(sizes) - running,
            "running_tasks": running,
            "outstanding_tasks": outstanding,
            "total_tasks": submitted,
            **htex_status.settings_status(type(self).__name__, self.executor, self.scaling),
            "blocks": block_states(self.executor),
            "node_info": htex_status.node_info(
                self.executor.blocks_to_job_id, managers, self._packages
            ),
        }
