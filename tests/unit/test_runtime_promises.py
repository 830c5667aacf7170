"""The user endpoint runtime's promises, without a broker (`tests/unit/stub_amqp.py`).

Each test runs a real `EndpointRuntime` loop on its own thread against stub sessions, plays
the broker's part (connect, deliver, confirm, disconnect) and checks the global sequence of
what the runtime did, and the journal file at the moment it did it. Task messages are built
and results decoded with the real protocol code. The real-broker versions of some of these
checks live in `tests/integration/test_runtime.py`.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from endpoint.amqp.queues import EndpointQueues, QueueInfo
from endpoint.engines.base import (
    CODE_ENGINE_FAILURE,
    Engine,
    Failure,
    ResultCallback,
    TaskSubmission,
)
from endpoint.engines.build import build_engine_from_dict
from endpoint.host.status import Health, judge, read_status
from endpoint.protocol.messages import EPStatusReport, Result, Task, pack, unpack_as
from endpoint.protocol.serialize import deserialize, pack_buffers, serialize
from endpoint.runtime import adapter
from endpoint.runtime.adapter import EndpointRuntime
from endpoint.runtime.journal import JournaledTask
from tests.runtime_helpers import runtime_settings
from tests.unit.stub_amqp import (
    DEADLINE_S,
    Op,
    StubBroker,
    StubSession,
    confirm_prefixes,
    journal_rows,
    tap_journal,
)

TASKS, RESULTS, BEATS = "amqp-tasks", "amqp-results", "amqp-heartbeats"


def square(x: int) -> int:
    return x * x


def size_of(data: str) -> int:
    return len(data)


def task_message(fn: Callable[..., Any], *args: Any) -> tuple[str, bytes]:
    task_id = str(uuid.uuid4())
    buf = pack_buffers([serialize(fn)]) + pack_buffers([serialize(args), serialize({})])
    return task_id, pack(Task(task_id=task_id, task_buffer=buf))


def task_headers(task_id: str) -> dict[str, Any]:
    return {
        "task_uuid": task_id,
        "function_uuid": str(uuid.uuid4()),
        "resource_specification": "null",
        "result_serializers": [],
    }


def queue(role: str, url: str | None = None) -> QueueInfo:
    return QueueInfo(url or f"amqp://stub-{role}/", f"ep.{role}", "", f"ep.{role}", {})


class ManualEngine(Engine):
    """A fake engine: a task runs until the test finishes it; it fails when told to."""

    def __init__(self, broker: StubBroker, name: str = "engine", window: int = 4) -> None:
        self.broker = broker
        self.name = name
        self.window = window
        self.failed: Failure | None = None
        self.shut_down = False
        self._on_result: ResultCallback | None = None
        self._lock = threading.Lock()
        self.submitted: list[str] = []
        self.finished: set[str] = set()

    def start(self, *, endpoint_id: str, run_dir: Path, on_result: ResultCallback) -> None:
        self._on_result = on_result
        self.broker.record(self.name, "start")

    def submit(self, task: TaskSubmission) -> None:
        with self._lock:
            self.submitted.append(task.task_id)
        self.broker.record(self.name, "submit", keys=(task.task_id,))

    def finish(self, task_id: str, value: Any) -> None:
        """The task returns `value` (delivered like a worker's Result)."""
        assert self._on_result is not None
        with self._lock:
            self.finished.add(task_id)
        self._on_result(task_id, pack(Result(task_id=task_id, data=serialize(value))))

    def finish_all(self) -> None:
        with self._lock:
            left = [t for t in self.submitted if t not in self.finished]
        for task_id in left:
            self.finish(task_id, None)

    def failure(self) -> Failure | None:
        return self.failed

    def inflight_target(self) -> int:
        return self.window

    #: Workers its status reports (a connected worker resets the block breaker's back-off).
    workers = 1

    def status(self) -> dict[str, Any]:
        return {"total_workers": self.workers, "engine_type": type(self).__name__}

    def shutdown(self, *, wait: bool = True) -> None:
        self.shut_down = True
        self.broker.record(self.name, "shutdown", info={"wait": wait})

    def wait_submitted(self, *task_ids: str) -> None:
        self.broker.wait_for(
            lambda: all(t in self.submitted for t in task_ids),
            f"{self.name} to get {list(task_ids)}",
        )


@dataclass
class Harness:
    rt: EndpointRuntime
    broker: StubBroker
    journal_path: Path
    engines: list[ManualEngine] = field(default_factory=list)
    thread: threading.Thread | None = None
    bodies: dict[str, bytes] = field(default_factory=dict)

    @property
    def tasks(self) -> StubSession:
        return self.broker.sessions[TASKS]

    @property
    def results(self) -> StubSession:
        return self.broker.sessions[RESULTS]

    @property
    def beats(self) -> StubSession:
        return self.broker.sessions[BEATS]

    def start(self) -> None:
        self.thread = threading.Thread(target=self.rt.run, name="runtime", daemon=True)
        self.thread.start()
        sessions = list(self.broker.sessions.values())
        self.broker.wait_for(lambda: all(s.started for s in sessions), "the sessions to start")
        for s in sessions:
            s.connect()

    def send(self, fn: Callable[..., Any], *args: Any) -> str:
        task_id, body = task_message(fn, *args)
        self.send_body(task_id, body)
        return task_id

    def send_body(self, task_id: str, body: bytes) -> tuple[int, int]:
        self.bodies[task_id] = body
        return self.tasks.deliver(body, task_headers(task_id))

    def result(self, task_id: str, count: int = 1) -> Result:
        """The `count`-th published result of `task_id`, decoded."""
        msg = self.broker.wait_published(RESULTS, task_id, count)[count - 1]
        found: Result = unpack_as(msg.body, Result)
        assert found.task_id == task_id
        return found

    def wait_forgotten(self, *task_ids: str) -> None:
        self.broker.wait_for(
            lambda: not set(task_ids) & set(journal_rows(self.journal_path)),
            f"the journal to forget {list(task_ids)}",
        )

    def stop(self) -> None:
        assert self.thread is not None
        self.rt.request_stop()
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive(), "the runtime did not stop"


Make = Callable[..., Harness]


@pytest.fixture(autouse=True)
def keep_the_process_title(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop runs inside pytest: leave pytest's name in `ps` alone."""
    monkeypatch.setattr(adapter, "set_title", lambda _title: None)


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    made: list[Harness] = []

    def build(
        engine: str = "manual",
        *,
        window: int = 4,
        replaceable: bool = False,
        shared_url: bool = False,
        **settings: Any,
    ) -> Harness:
        broker = StubBroker(confirm=confirm_prefixes("heartbeat:"))
        engines: list[ManualEngine] = []

        def new_engine() -> Engine:
            if engine == "threads":
                return build_engine_from_dict({"type": "ThreadPoolEngine", "max_workers": 2})
            engines.append(ManualEngine(broker, f"engine-{len(engines) + 1}", window))
            return engines[-1]

        url = "amqp://stub-shared/" if shared_url else None
        ep_dir = tmp_path / f"ep{len(made)}"
        rt = EndpointRuntime(
            endpoint_id=str(uuid.uuid4()),
            ep_dir=ep_dir,
            engine=new_engine(),
            queues=EndpointQueues(queue("tasks", url), queue("results", url), queue("hb", url)),
            settings=runtime_settings(**settings),
            config_text="engine: {type: ThreadPoolEngine}\n",
            engine_factory=new_engine if replaceable else None,
            sessions=broker,
        )
        tap_journal(rt, broker)
        h = Harness(rt, broker, ep_dir / "journal.db", engines)
        made.append(h)
        return h

    yield build
    for h in made:  # a failed test must not leave a runtime draining for long
        if h.thread is not None and h.thread.is_alive():
            h.broker.confirm_policy = lambda _item: True
            for e in h.engines:
                e.finish_all()
            for s in h.broker.sessions.values():
                if s.connected:
                    s.settle_all()
            h.rt.request_stop()
            h.thread.join(DEADLINE_S)


def delivery_of(broker: StubBroker, task_id: str, nth: int = 1) -> Op:
    found = [
        op for op in broker.ops(TASKS, "deliver") if op.info["headers"]["task_uuid"] == task_id
    ]
    assert len(found) >= nth, broker.describe()
    return found[nth - 1]


def covers(delivery: Op) -> Callable[[Op], bool]:
    """Whether an op is an ack of `delivery` (same generation, its tag or a later multiple)."""

    def pred(op: Op) -> bool:
        return (
            op.source == TASKS
            and op.kind == "ack"
            and op.generation == delivery.generation
            and (op.tag == delivery.tag or (op.multiple and op.tag > delivery.tag))
        )

    return pred


def ack_of(broker: StubBroker, delivery: Op) -> Op:
    """The first ack that covers `delivery`."""
    return broker.first(covers(delivery), f"ack of {delivery}")


def journal_write(broker: StubBroker, what: str, task_id: str) -> Op:
    """The first committed journal write that `what` (added/results/forgot) `task_id`."""
    return broker.first(
        lambda op: op.write is not None and task_id in getattr(op.write, what),
        f"journal write that {what} {task_id}",
    )


def confirm_of(broker: StubBroker, task_id: str) -> Op:
    """The first positive confirm of `task_id`'s result."""
    return broker.first(
        lambda op: op.kind == "confirm" and op.ok and task_id in op.keys, f"confirm of {task_id}"
    )


def publishes_of(broker: StubBroker, task_id: str) -> list[Op]:
    return [op for op in broker.ops(RESULTS, "publish") if task_id in op.keys]


# ---- journal before ack, journal before publish, forget only on confirm ---------------------


def test_a_delivered_task_is_journaled_before_it_is_acked(make: Make) -> None:
    h = make("threads")
    at_ack: dict[int, dict[str, JournaledTask]] = {}

    def snapshot(op: Op) -> None:
        if op.source == TASKS and op.kind == "ack":
            at_ack[op.seq] = journal_rows(h.journal_path)

    h.broker.observe(snapshot)
    h.start()
    ids = [h.send(square, i) for i in range(5)]
    assert [deserialize(h.result(t).data) for t in ids] == [i * i for i in range(5)]
    for tid in ids:
        ack = ack_of(h.broker, delivery_of(h.broker, tid))
        assert journal_write(h.broker, "added", tid).seq < ack.seq
        # Committed to the file, body and all, when the ack went to the broker.
        assert at_ack[ack.seq][tid].body == h.bodies[tid]
        assert not ack.stale
    assert not h.broker.ops(TASKS, "reject")
    h.results.settle_all()
    h.wait_forgotten(*ids)
    h.stop()


def test_a_result_is_journaled_before_it_is_published(make: Make) -> None:
    h = make("threads")
    at_publish: dict[int, dict[str, JournaledTask]] = {}

    def snapshot(op: Op) -> None:
        if op.source == RESULTS and op.kind == "publish":
            at_publish[op.seq] = journal_rows(h.journal_path)

    h.broker.observe(snapshot)
    h.start()
    ids = [h.send(square, i) for i in range(5)]
    for tid in ids:
        published = h.broker.wait_published(RESULTS, tid)[0]
        (publish,) = publishes_of(h.broker, tid)
        assert journal_write(h.broker, "results", tid).seq < publish.seq
        assert at_publish[publish.seq][tid].result == published.body
        assert published.routing_key == "ep.results"
    h.results.settle_all()
    h.wait_forgotten(*ids)
    h.stop()


def test_a_task_is_forgotten_only_once_its_result_is_confirmed(make: Make) -> None:
    h = make()
    (engine,) = h.engines
    h.start()
    nacked, silent = h.send(square, 1), h.send(square, 2)
    engine.wait_submitted(nacked, silent)
    engine.finish(nacked, 1)
    engine.finish(silent, 4)
    first = h.result(nacked)
    h.result(silent)

    h.results.confirm([nacked], ok=False)
    again = h.result(nacked, count=2)  # re-sent while connected, the same result
    assert (again.data, again.task_id) == (first.data, first.task_id)
    rows = journal_rows(h.journal_path)
    assert rows[nacked].result is not None and rows[silent].result is not None
    assert not [op for op in h.broker.ops("journal") if op.write and op.write.forgot]

    h.results.confirm([nacked])
    h.wait_forgotten(nacked)
    # No confirm for `silent`: kept, and re-sent on the next connection.
    assert silent in journal_rows(h.journal_path)
    h.results.disconnect()
    h.results.connect()
    h.result(silent, count=2)
    assert publishes_of(h.broker, silent)[-1].generation == 2
    assert silent in journal_rows(h.journal_path)
    h.results.confirm([silent])
    h.wait_forgotten(silent)

    for tid in (nacked, silent):
        assert confirm_of(h.broker, tid).seq < journal_write(h.broker, "forgot", tid).seq
    assert deserialize(first.data) == 1
    h.stop()


# ---- reconnects -----------------------------------------------------------------------------


def test_a_reconnect_republishes_unconfirmed_results(make: Make) -> None:
    h = make()
    (engine,) = h.engines
    h.start()
    sent, offline = h.send(square, 3), h.send(square, 4)
    engine.wait_submitted(sent, offline)
    engine.finish(sent, 9)
    first = h.result(sent)
    # No nack for `sent` either: the runtime's own bookkeeping must re-send it.
    h.results.disconnect(nack_in_flight=False)
    h.broker.wait_for(lambda: not h.rt.ix.connected, "the runtime to see the disconnect")
    engine.finish(offline, 16)
    h.broker.wait_for(
        lambda: journal_rows(h.journal_path)[offline].result is not None,
        "the offline result to be journaled",
    )
    assert not publishes_of(h.broker, offline), "published while the results link was down"

    h.results.connect()
    assert h.result(sent, count=2).data == first.data
    assert deserialize(h.result(offline).data) == 16
    assert {op.generation for op in publishes_of(h.broker, sent)} == {1, 2}
    assert [op.generation for op in publishes_of(h.broker, offline)] == [2]
    assert set(journal_rows(h.journal_path)) == {sent, offline}
    h.results.settle_all()
    h.wait_forgotten(sent, offline)
    h.stop()


def test_deliveries_of_an_old_generation_are_not_acked_on_the_new_one(make: Make) -> None:
    h = make()
    (engine,) = h.engines
    a, body_a = task_message(square, 1)
    b, body_b = task_message(square, 2)
    c, body_c = task_message(square, 3)
    fired = threading.Event()

    def reconnect_under_the_loop(op: Op) -> None:
        # Runs on the loop thread as it acks `a`: before the loop looks at its queue again, `b`
        # arrives on generation 1, the link drops and comes back, and `c` arrives on
        # generation 2. The loop then acks `b` in a batch that also holds generation 2.
        if op.source == TASKS and op.kind == "ack" and not fired.is_set():
            fired.set()
            h.send_body(b, body_b)
            h.tasks.disconnect()
            h.tasks.connect()
            h.send_body(c, body_c)

    h.broker.observe(reconnect_under_the_loop)
    h.start()
    h.send_body(a, body_a)
    engine.wait_submitted(a, b, c)
    ack_b = ack_of(h.broker, delivery_of(h.broker, b))
    assert ack_b.generation == 1 and ack_b.stale  # the real session drops it; the broker requeues
    # The broker redelivers `b` on generation 2: recognised, acked there, not run twice.
    h.send_body(b, body_b)
    redelivered = delivery_of(h.broker, b, nth=2)
    assert redelivered.generation == 2
    assert not h.broker.wait_op(covers(redelivered), "the ack of the redelivery").stale
    h.broker.wait_for(lambda: h.rt.ix.counters["duplicates"] == 1, "the duplicate to be seen")
    for ack in h.broker.ops(TASKS, "ack"):
        delivered_before = {
            op.tag
            for op in h.broker.ops(TASKS, "deliver")
            if op.generation == ack.generation and op.seq < ack.seq
        }
        assert ack.tag in delivered_before, f"ack {ack} covers no delivery of its generation"
    assert sorted(engine.submitted) == sorted([a, b, c])
    engine.finish_all()
    for tid in (a, b, c):
        h.result(tid)
    h.results.settle_all()
    h.wait_forgotten(a, b, c)
    h.stop()


# ---- stopping -------------------------------------------------------------------------------


def test_stop_drains_running_tasks_then_says_goodbye_before_the_sessions_stop(
    make: Make,
) -> None:
    h = make(window=2)
    (engine,) = h.engines
    h.start()
    running = [h.send(square, 1), h.send(square, 2)]
    queued = h.send(square, 3)
    engine.wait_submitted(*running)
    h.broker.wait_for(lambda: queued in journal_rows(h.journal_path), "the queued task")
    h.rt.request_stop()
    h.broker.wait_for(lambda: not h.rt.ix.accepting, "the runtime to stop accepting")
    late_id, late_body = task_message(square, 4)
    late = h.send_body(late_id, late_body)
    for tid in running:
        engine.finish(tid, 0)
    for tid in running:
        h.result(tid)
        h.results.confirm([tid])
    assert h.thread is not None
    h.thread.join(DEADLINE_S)
    assert not h.thread.is_alive()

    goodbye = h.broker.first(
        lambda op: (
            op.source == BEATS
            and op.kind == "publish"
            and unpack_as(op.messages[0].body, EPStatusReport).global_state["active"] is False
        ),
        "the final heartbeat",
    )
    for tid in running:
        assert publishes_of(h.broker, tid)[0].seq < goodbye.seq
    stops = h.broker.ops(kind="stop")
    assert {op.source for op in stops} == {TASKS, RESULTS, BEATS}
    assert all(goodbye.seq < op.seq for op in stops)
    assert h.broker.first(lambda op: op.kind == "confirm" and goodbye.keys == op.keys).ok
    (shutdown,) = h.broker.ops("engine-1", "shutdown")
    assert shutdown.seq > max(op.seq for op in stops)
    # The queued task never started and stays journaled for the next start; the task that
    # arrived during shutdown was neither journaled nor acked (the broker requeues it).
    rows = journal_rows(h.journal_path)
    assert set(rows) == {queued} and rows[queued].attempts == 0
    assert queued not in engine.submitted
    assert all(op.tag != late[1] for op in h.broker.ops(TASKS, "ack"))


# ---- engines --------------------------------------------------------------------------------


def test_a_broken_engine_is_replaced_and_its_running_tasks_fail(make: Make) -> None:
    h = make(replaceable=True)
    old = h.engines[0]
    h.start()
    lost = [h.send(square, 1), h.send(square, 2)]
    old.wait_submitted(*lost)
    old.failed = Failure(CODE_ENGINE_FAILURE, "its interchange died")
    for tid in lost:
        res = h.result(tid)
        assert res.error_details is not None
        assert res.error_details["code"] == CODE_ENGINE_FAILURE
        assert "its interchange died" in res.data
    h.broker.wait_op(lambda op: op.source == "engine-2" and op.kind == "start", "a new engine")
    (shutdown,) = h.broker.ops("engine-1", "shutdown")
    assert shutdown.info == {"wait": False} and old.shut_down
    new = h.engines[1]
    later = h.send(square, 3)
    new.wait_submitted(later)
    assert later not in old.submitted
    old.finish(lost[0], 1)  # a late result of the replaced engine is dropped
    new.finish(later, 9)
    assert deserialize(h.result(later).data) == 9
    assert len(publishes_of(h.broker, lost[0])) == 1
    h.results.settle_all()
    h.wait_forgotten(*lost, later)
    h.stop()


def test_a_task_arriving_as_the_engine_breaks_runs_on_the_new_engine(make: Make) -> None:
    """Found by this suite: tasks of the plan being submitted were counted as lost with the
    broken engine (an EngineFailure result), then ran on the new one (result dropped)."""
    h = make(replaceable=True)
    old = h.engines[0]
    running, arriving = task_message(square, 1), task_message(square, 2)

    def break_the_engine(op: Op) -> None:
        # The engine breaks after `arriving` was journaled and acked, before it is handed to
        # the engine (the same happens when it broke up to a maintenance period earlier).
        if op.source == TASKS and op.kind == "ack" and op.tag == 2:
            old.failed = Failure(CODE_ENGINE_FAILURE, "its interchange died")

    h.broker.observe(break_the_engine)
    h.start()
    h.send_body(*running)
    old.wait_submitted(running[0])
    h.send_body(*arriving)
    lost = h.result(running[0])
    assert lost.error_details is not None and lost.error_details["code"] == CODE_ENGINE_FAILURE
    h.broker.wait_op(lambda op: op.source == "engine-2" and op.kind == "start", "a new engine")
    new = h.engines[1]
    new.wait_submitted(arriving[0])
    assert arriving[0] not in old.submitted
    new.finish(arriving[0], 4)
    res = h.result(arriving[0])
    assert res.error_details is None, res.data
    assert deserialize(res.data) == 4
    h.results.settle_all()
    h.wait_forgotten(running[0], arriving[0])
    h.stop()


def test_an_engine_that_keeps_failing_trips_the_breaker_and_no_new_engine_starts(
    make: Make,
) -> None:
    """Issue 14: a config whose blocks never start (a bad worker_init, partition, account)
    must not make the endpoint submit new batch jobs forever. After the restart budget, no
    new engine (hence no new block) starts; heartbeats, status.json and health say why."""
    h = make(replaceable=True)
    h.start()

    def handed(tid: str) -> ManualEngine:
        # A broken engine is replaced when the next task comes: whichever engine got it.
        return h.broker.wait_for(
            lambda: next((e for e in h.engines if tid in e.submitted), None), f"{tid} handed"
        )

    for n in range(1, adapter.MAX_ENGINE_RESTARTS + 2):
        tid = h.send(square, n)
        engine = handed(tid)
        assert engine is h.engines[-1] and len(h.engines) == n
        engine.finish(tid, None)
        engine.failed = Failure(CODE_ENGINE_FAILURE, f"block of engine {n} died: bad worker_init")
    # The last engine's failure is seen with the next task: the budget is spent.
    ids = [h.send(square, 0)]
    handed(ids[0])
    assert len(h.engines) == adapter.MAX_ENGINE_RESTARTS + 1  # no new engine, no new block

    def tripped() -> dict[str, Any] | None:
        found = (read_status(h.rt.ep_dir) or {}).get("engine_breaker")
        return found if isinstance(found, dict) else None

    breaker = h.broker.wait_for(tripped, "the breaker in status.json")
    assert breaker["state"] == "open" and "bad worker_init" in breaker["reason"]
    verdict = judge(read_status(h.rt.ep_dir), alive=True)
    assert not verdict.healthy and "keeps failing" in verdict.reason

    def beat_with_breaker() -> bool:
        for msg in h.broker.published(BEATS):
            state = unpack_as(msg.body, EPStatusReport).global_state
            if (state.get("engine_breaker") or {}).get("state") == "open":
                return True
        return False

    h.broker.wait_for(beat_with_breaker, "a heartbeat that shows the open breaker")
    ids.append(h.send(square, 5))
    handed(ids[1])
    assert len(h.engines) == adapter.MAX_ENGINE_RESTARTS + 1
    h.engines[-1].finish_all()
    for tid in ids:
        h.result(tid)
    h.results.settle_all()
    h.wait_forgotten(*ids)
    h.stop()


# ---- refusals -------------------------------------------------------------------------------


def test_an_oversized_task_gets_a_clear_error_and_nothing_is_lost(make: Make) -> None:
    small, small_body = task_message(size_of, "x")
    big, big_body = task_message(size_of, "x" * 5000)
    h = make(max_task_size=len(small_body))  # the limit itself is allowed
    (engine,) = h.engines
    h.start()
    h.send_body(big, big_body)
    h.send_body(small, small_body)
    res = h.result(big)
    assert res.error_details is not None and res.error_details["code"] == "TaskTooLarge"
    assert f"the task is {len(big_body)} bytes" in res.data
    assert f"limit of {len(small_body)} bytes" in res.data
    rows = journal_rows(h.journal_path)
    assert rows[big].body == b"" and rows[big].result is not None
    engine.wait_submitted(small)
    assert big not in engine.submitted
    ack = ack_of(h.broker, delivery_of(h.broker, big))
    assert journal_write(h.broker, "results", big).seq < ack.seq
    engine.finish(small, 1)
    assert deserialize(h.result(small).data) == 1
    h.results.settle_all()
    h.wait_forgotten(big, small)
    h.stop()


def test_a_delivery_without_task_headers_is_rejected_and_never_journaled(make: Make) -> None:
    h = make()
    (engine,) = h.engines
    h.start()
    gen, tag = h.tasks.deliver(b"junk", {})
    good = h.send(square, 5)
    engine.wait_submitted(good)
    (reject,) = h.broker.ops(TASKS, "reject")
    assert (reject.generation, reject.tag, reject.stale) == (gen, tag, False)
    assert all(op.tag != tag for op in h.broker.ops(TASKS, "ack"))
    assert set(journal_rows(h.journal_path)) == {good}
    engine.finish(good, 25)
    h.result(good)
    h.results.settle_all()
    h.stop()


def test_one_shared_connection_serves_every_role(make: Make) -> None:
    h = make("threads", shared_url=True)
    assert list(h.broker.sessions) == [TASKS]  # the consuming role names the shared session
    h.start()
    hello = h.broker.wait_op(
        lambda op: op.source == TASKS and op.kind == "publish" and op.keys[0].startswith("heart"),
        "the hello heartbeat",
    )
    assert unpack_as(hello.messages[0].body, EPStatusReport).global_state["active"] is True
    tid = h.send(square, 6)
    msg = h.broker.wait_published(TASKS, tid)[0]
    assert msg.routing_key == "ep.results"
    assert deserialize(unpack_as(msg.body, Result).data) == 36
    h.tasks.confirm([tid])
    h.wait_forgotten(tid)
    h.stop()


@pytest.mark.parametrize(
    "task_id",
    ["x" * 300, "not-a-uuid", "{" + "1" * 32 + "}", "12345678123456781234567812345678"],
)
def test_a_delivery_whose_task_id_is_not_a_uuid_is_rejected_once(make: Make, task_id: str) -> None:
    """Issue 13 (finding 9): a task id the service never makes (a UUID is 36 characters)
    would give a result whose message id the broker refuses, republished forever."""
    h = make()
    (engine,) = h.engines
    h.start()
    body = task_message(square, 2)[1]
    gen, tag = h.tasks.deliver(body, task_headers(task_id))
    good = h.send(square, 5)
    engine.wait_submitted(good)
    (reject,) = h.broker.ops(TASKS, "reject")
    assert (reject.generation, reject.tag, reject.stale) == (gen, tag, False)
    assert set(journal_rows(h.journal_path)) == {good}
    assert engine.submitted == [good]
    engine.finish(good, 25)
    h.result(good)
    h.results.settle_all()
    assert not [m for m in h.broker.published(RESULTS) if m.key == task_id]
    assert h.rt.ix.counters["rejected"] == 1
    h.stop()


def test_a_cancelled_consumer_turns_health_bad_until_it_consumes_again(make: Make) -> None:
    """Issue 13 (finding 6): the broker cancels the consumer of a deleted task queue; the
    runtime says so in status.json (health fails) until the session consumes again."""
    h = make("threads")
    h.start()
    ep_dir = h.rt.ep_dir

    def verdict() -> Health:
        return judge(read_status(ep_dir), alive=True)

    h.broker.wait_for(lambda: verdict().healthy, "a healthy status")
    first = h.send(square, 3)
    assert deserialize(h.result(first).data) == 9
    h.tasks.cancel_consumer()

    def unhealthy() -> Health | None:
        found = verdict()
        return None if found.healthy else found

    bad = h.broker.wait_for(unhealthy, "health to turn bad")
    assert "cancelled the task queue consumer" in bad.reason
    assert (read_status(ep_dir) or {})["amqp_connected"] is True  # the connection itself is fine
    h.tasks.resume_consumer()
    h.broker.wait_for(lambda: verdict().healthy, "health to come back")
    second = h.send(square, 4)
    assert deserialize(h.result(second).data) == 16
    h.results.settle_all()
    h.wait_forgotten(first, second)
    h.stop()


def test_the_block_breaker_holds_back_a_new_engine_for_its_back_off_then_tries_again(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: an engine whose blocks keep failing asks for a back-off (its Failure's
    retry_after_s): no new engine (hence no batch job) starts during it, whatever tasks
    arrive; they fail fast with the reason; health says no new blocks; after the back-off
    one new engine tries again, and a second trip in a row doubles the back-off."""
    monkeypatch.setattr(ManualEngine, "workers", 0)  # no block ever gets a worker
    h = make(replaceable=True)
    h.start()
    first = h.engines[0]
    first.failed = Failure(CODE_ENGINE_FAILURE, "3 batch jobs in a row ended: job 17", 0.8)
    tid = h.send(square, 1)

    def tripped() -> dict[str, Any] | None:
        found = (read_status(h.rt.ep_dir) or {}).get("engine_breaker")
        return found if isinstance(found, dict) and found.get("state") == "open" else None

    breaker = h.broker.wait_for(tripped, "the block breaker in status.json")
    assert breaker["kind"] == "blocks" and breaker["trips"] == 1, breaker
    assert "job 17" in breaker["reason"]
    verdict = judge(read_status(h.rt.ep_dir), alive=True)
    assert not verdict.healthy and "no new blocks" in verdict.reason, verdict
    assert len(h.engines) == 1  # held back while the back-off runs
    first.finish_all()
    h.result(tid)
    # After the back-off: a new engine starts, and the breaker closes.
    h.broker.wait_op(lambda op: op.source == "engine-2" and op.kind == "start", "a new engine")
    h.broker.wait_for(lambda: tripped() is None, "the breaker to close")
    # It trips again at once: the second back-off (1.6 s) is twice the first.
    second = h.engines[1]
    second.failed = Failure(CODE_ENGINE_FAILURE, "3 batch jobs in a row ended: job 18", 0.8)
    tid2 = h.send(square, 2)
    again = h.broker.wait_for(tripped, "the second trip")
    assert again["trips"] == 2 and "job 18" in again["reason"], again
    second.finish_all()
    h.result(tid2)
    h.broker.wait_op(lambda op: op.source == "engine-3" and op.kind == "start", "a third engine")
    h.results.settle_all()
    h.wait_forgotten(tid, tid2)
    h.stop()
