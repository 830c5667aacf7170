"""The user endpoint's task/result bookkeeping as an I/O-free state machine.

Events go in (deliveries, results from the engine, publisher confirms, connection changes,
ticks); each returns a `Plan` that says what to journal, ack, run and publish. `adapter.py`
executes plans in a fixed order: journal first, then acks and publishes, then engine submits.
That order carries the promises: nothing is acked before it is journaled, no result is
published before it is journaled, and a row leaves the journal only on a broker confirm.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from endpoint.engines.base import TaskSubmission
from endpoint.protocol.limits import DEFAULT_MAX_TASK_SIZE
from endpoint.protocol.results import error_result
from endpoint.runtime.journal import JournaledTask

log = logging.getLogger(__name__)

#: At least how many confirmed task ids we remember, to recognise a late redelivery of a
#: finished task (the runtime raises it to twice the prefetch count: every delivery that can be
#: unacked when a connection drops, and so come back after the task finished).
RECENTLY_DONE = 8192


@dataclass(frozen=True)
class Delivery:
    generation: int
    tag: int
    headers: dict[str, Any]
    body: bytes


@dataclass
class Plan:
    add_tasks: list[JournaledTask] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    results: list[tuple[str, bytes]] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    acks: list[tuple[int, int]] = field(default_factory=list)
    rejects: list[tuple[int, int]] = field(default_factory=list)
    publish: list[tuple[str, bytes]] = field(default_factory=list)
    submit: list[TaskSubmission] = field(default_factory=list)

    def extend(self, other: Plan) -> None:
        for name in self.__dataclass_fields__:
            getattr(self, name).extend(getattr(other, name))

    @property
    def journal_writes(self) -> bool:
        return bool(self.add_tasks or self.started or self.results or self.forget)


_TASK_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def is_task_id(value: str) -> bool:
    """A task id as the service makes them: a UUID in its 36-character hyphenated form.

    Anything else cannot come back: the result's message id (an AMQP short string, at most
    255 bytes) or the service's lookup would refuse it, and the result would be republished
    forever."""
    # A regular expression: uuid.UUID() was the largest single cost of a delivery.
    return len(value) == 36 and _TASK_ID.fullmatch(value) is not None


def _header_str(headers: dict[str, Any], key: str) -> str | None:
    value = headers.get(key)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


class RecentIds:
    """The last `keep` to `2 * keep` ids added, in two generations of plain sets.

    A finished task's id is kept only to recognise its late redelivery. An OrderedDict of id
    strings cost ~185 bytes per id, and a long-running endpoint filled all of it; this keeps
    UUIDs as 16 bytes in sets that are dropped whole, so memory is bounded and small.
    """

    def __init__(self, keep: int) -> None:
        self.keep = max(1, keep)
        self._current: set[bytes | str] = set()
        self._previous: set[bytes | str] = set()

    @staticmethod
    def _key(task_id: str) -> bytes | str:
        # The 16 bytes of the UUID (any spelling); bytes.fromhex is several times cheaper
        # than uuid.UUID() on this per-task path.
        if is_task_id(task_id):
            return bytes.fromhex(task_id.replace("-", ""))
        return task_id  # not a UUID: the service never sends one, but keep it exact

    def add(self, task_id: str) -> None:
        if len(self._current) >= self.keep:
            self._previous, self._current = self._current, set()
        self._current.add(self._key(task_id))

    def __contains__(self, task_id: object) -> bool:
        if not isinstance(task_id, str):
            return False
        key = self._key(task_id)
        return key in self._current or key in self._previous

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)


class Interchange:
    def __init__(
        self,
        endpoint_id: str,
        *,
        window: int,
        allowed_functions: AbstractSet[str] | None = None,
        max_retries_on_system_failure: int = 0,
        max_task_size: int = DEFAULT_MAX_TASK_SIZE,
        remember_done: int = RECENTLY_DONE,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.max_task_size = max_task_size
        self.window = max(1, window)
        self.allowed_functions = allowed_functions
        self.max_retries = max_retries_on_system_failure
        self.tasks: dict[str, JournaledTask] = {}
        self.pending: deque[str] = deque()
        self.running: set[str] = set()
        self.unconfirmed: set[str] = set()
        self.to_republish: set[str] = set()
        self.connected = False
        self.accepting = True
        self._done = RecentIds(remember_done)
        self.counters = {"received": 0, "completed": 0, "rejected": 0, "duplicates": 0}

    # ---- recovery ---------------------------------------------------------------------
    def recover(self, journaled: list[JournaledTask]) -> Plan:
        """Adopt what a previous run left: re-send results, run or fail interrupted tasks."""
        plan = Plan()
        for t in journaled:
            self.tasks[t.task_id] = t
            if t.result is not None:
                self.to_republish.add(t.task_id)
            elif t.attempts == 0 or t.attempts <= self.max_retries:
                self.pending.append(t.task_id)
            else:
                msg = (
                    f"the endpoint process stopped while this task was running "
                    f"(attempt {t.attempts} of {self.max_retries + 1}); it was not retried"
                )
                self._finish(
                    t.task_id,
                    error_result(t.task_id, "EndpointInterrupted", msg, self.endpoint_id),
                    plan,
                )
        if journaled:
            log.info(
                "recovered %s journaled tasks: %s results to re-send, %s to run",
                len(journaled),
                len(self.to_republish),
                len(self.pending),
            )
        self._fill(plan)
        return plan

    # ---- events -----------------------------------------------------------------------
    def on_deliveries(self, deliveries: list[Delivery]) -> Plan:
        plan = Plan()
        for d in deliveries:
            self._on_delivery(d, plan)
        self._fill(plan)
        return plan

    def _on_delivery(self, d: Delivery, plan: Plan) -> None:
        if not self.accepting:
            return  # unacked: the broker requeues it when we close the channel
        task_id = _header_str(d.headers, "task_uuid")
        function_id = _header_str(d.headers, "function_uuid")
        if task_id is None or function_id is None:
            # Without a task id no result can reach anyone; dead-letter instead of looping.
            log.error(
                "rejecting a delivery without task_uuid/function_uuid headers: %s",
                sorted(d.headers),
            )
            self.counters["rejected"] += 1
            plan.rejects.append((d.generation, d.tag))
            return
        if not is_task_id(task_id):
            # No result for it could be delivered: dead-letter it now, with one line, rather
            # than run it and retry its result forever.
            log.error(
                "rejecting a delivery whose task_uuid is not a UUID: %r (%s characters)",
                task_id[:64],
                len(task_id),
            )
            self.counters["rejected"] += 1
            plan.rejects.append((d.generation, d.tag))
            return
        plan.acks.append((d.generation, d.tag))
        if task_id in self.tasks or task_id in self._done:
            self.counters["duplicates"] += 1
            log.info("task %s redelivered; it is already journaled or done", task_id)
            return
        self.counters["received"] += 1
        too_large = len(d.body) > self.max_task_size
        # An oversized body is not journaled: the error result is all we keep of it.
        task = JournaledTask(task_id, function_id, b"" if too_large else d.body, [], None)
        failure = self._too_large(task_id, len(d.body)) if too_large else None
        failure = failure or self._validate(task, d.headers)
        plan.add_tasks.append(task)
        self.tasks[task_id] = task
        if failure is not None:
            self._finish(task_id, failure, plan)
        else:
            self.pending.append(task_id)

    def _too_large(self, task_id: str, size: int) -> bytes:
        return error_result(
            task_id,
            "TaskTooLarge",
            f"the task is {size} bytes, more than this endpoint's limit of"
            f" {self.max_task_size} bytes; pass large data by reference (a file or URL)",
            self.endpoint_id,
        )

    def _validate(self, task: JournaledTask, headers: dict[str, Any]) -> bytes | None:
        """Fill the task from its headers; return an error Result when it cannot run."""
        tid = task.task_id
        if self.allowed_functions is not None and task.function_id not in self.allowed_functions:
            return error_result(
                tid,
                "FUNCTION_NOT_ALLOWED",
                f"function {task.function_id} is not allowed on endpoint {self.endpoint_id}",
                self.endpoint_id,
            )
        serializers = headers.get("result_serializers") or []
        if not isinstance(serializers, list) or not all(
            isinstance(s, str | bytes) for s in serializers
        ):
            return error_result(
                tid,
                "InvalidTaskHeaders",
                "header result_serializers must be a list of strings",
                self.endpoint_id,
            )
        task.result_serializers = [s.decode() if isinstance(s, bytes) else s for s in serializers]
        spec = _header_str(headers, "resource_specification")
        if spec is not None and spec != "null":
            try:
                parsed = json.loads(spec)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                return error_result(
                    tid,
                    "InvalidTaskHeaders",
                    f"header resource_specification is not a JSON object: {spec[:200]!r}",
                    self.endpoint_id,
                )
            task.resource_spec = spec if parsed else None
        return None

    def on_results(self, results: list[tuple[str, bytes]]) -> Plan:
        plan = Plan()
        for task_id, packed in results:
            if task_id not in self.running:
                log.warning("ignoring a second result for task %s", task_id)
                continue
            self.running.discard(task_id)
            self._finish(task_id, packed, plan)
        self._fill(plan)
        return plan

    def on_confirms(self, keys: list[str], ok: bool) -> Plan:
        plan = Plan()
        for key in keys:
            if key not in self.unconfirmed:
                continue  # a heartbeat, or a result confirmed twice after a reconnect
            self.unconfirmed.discard(key)
            if ok:
                self.tasks.pop(key, None)
                plan.forget.append(key)
                self._remember_done(key)
                self.counters["completed"] += 1
            else:
                self.to_republish.add(key)
        return plan

    def on_connected(self) -> Plan:
        self.connected = True
        return self.republish()

    def on_disconnected(self) -> None:
        self.connected = False
        self.to_republish |= self.unconfirmed
        self.unconfirmed.clear()

    def set_window(self, window: int) -> Plan:
        """Follow the engine's capacity; a wider window submits waiting tasks at once."""
        self.window = max(1, window)
        plan = Plan()
        if self.accepting:
            self._fill(plan)
        return plan

    def republish(self) -> Plan:
        """Re-send results whose publish failed or whose confirm never came."""
        plan = Plan()
        if not self.connected:
            return plan
        for task_id in sorted(self.to_republish):
            task = self.tasks.get(task_id)
            if task is not None and task.result is not None:
                plan.publish.append((task_id, task.result))
                self.unconfirmed.add(task_id)
        self.to_republish.clear()
        return plan

    def stop_accepting(self) -> None:
        self.accepting = False

    # ---- internals --------------------------------------------------------------------
    def _finish(self, task_id: str, packed: bytes, plan: Plan) -> None:
        task = self.tasks[task_id]
        task.result = packed
        plan.results.append((task_id, packed))
        if self.connected:
            plan.publish.append((task_id, packed))
            self.unconfirmed.add(task_id)
        else:
            self.to_republish.add(task_id)

    def _fill(self, plan: Plan) -> None:
        while self.pending and len(self.running) < self.window:
            task_id = self.pending.popleft()
            task = self.tasks[task_id]
            task.attempts += 1
            self.running.add(task_id)
            plan.started.append(task_id)
            plan.submit.append(
                TaskSubmission(
                    task_id=task_id,
                    packed_task=task.body,
                    result_serializers=task.result_serializers,
                    resource_specification=json.loads(task.resource_spec)
                    if task.resource_spec
                    else None,
                )
            )

    def _remember_done(self, task_id: str) -> None:
        self._done.add(task_id)

    @property
    def idle(self) -> bool:
        return not (self.pending or self.running or self.unconfirmed or self.to_republish)

    def status(self) -> dict[str, Any]:
        return {
            "queued_tasks": len(self.pending),
            "running_tasks": len(self.running),
            "unconfirmed_results": len(self.unconfirmed) + len(self.to_republish),
            **self.counters,
        }
