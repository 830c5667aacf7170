"""Our endpoint runtime against a real RabbitMQ: journal, acks, confirms and recovery.

The web service is not involved: the test declares the queues itself and plays the service's
part with pika, so every promise of the runtime is checked on the wire.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from endpoint.amqp.queues import EndpointQueues, QueueInfo
from endpoint.engines.build import build_engine_from_dict
from endpoint.protocol.messages import EPStatusReport, Result, Task, pack, unpack_as
from endpoint.protocol.serialize import deserialize, pack_buffers, serialize
from endpoint.runtime.adapter import EndpointRuntime
from endpoint.runtime.journal import Journal, JournaledTask
from tests.runtime_helpers import runtime_settings, split_options


def square(x: int) -> int:
    return x * x


def task_message(fn: Any, *args: Any, **kwargs: Any) -> tuple[str, bytes]:
    task_id = str(uuid.uuid4())
    buf = pack_buffers([serialize(fn)]) + pack_buffers([serialize(args), serialize(kwargs)])
    return task_id, pack(Task(task_id=task_id, task_buffer=buf))


class Broker:
    """The service's side of the queues, with a blocking pika connection."""

    def __init__(self, url: str, unique: str) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.tasks, self.results, self.beats = (f"{unique}.{n}" for n in ("tasks", "res", "hb"))
        for q in (self.tasks, self.results, self.beats):
            self.ch.queue_declare(q, durable=True)
        self.url = url
        #: Where `send` publishes tasks ("": the default exchange, by queue name).
        self.exchange = ""

    def queues(self) -> EndpointQueues:
        return EndpointQueues(self.info(self.tasks), self.info(self.results), self.info(self.beats))

    def info(self, queue: str) -> QueueInfo:
        return QueueInfo(
            connection_url=self.url,
            queue=queue,
            exchange="",
            routing_key=queue,
            properties={"delivery_mode": 2},
        )

    def send(self, task_id: str, body: bytes, **headers: Any) -> None:
        h = {
            "task_uuid": task_id,
            "function_uuid": str(uuid.uuid4()),
            "resource_specification": "null",
            "result_serializers": [],
            **headers,
        }
        self.ch.basic_publish(
            self.exchange, self.tasks, body, pika.BasicProperties(headers=h, delivery_mode=2)
        )

    def collect(self, n: int, timeout: float = 30) -> list[Result]:
        out: list[Result] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            method, _props, body = self.ch.basic_get(self.results, auto_ack=True)
            if method is None:
                self.conn.sleep(0.05)
                continue
            out.append(unpack_as(body, Result))
        return out

    def queue_depth(self, queue: str) -> int:
        return int(self.ch.queue_declare(queue, passive=True).method.message_count)


@pytest.fixture
def broker(amqp_url: str, unique: str) -> Iterator[Broker]:
    b = Broker(amqp_url, unique)
    yield b
    if b.conn.is_open:  # the outage test closes it itself
        b.conn.close()


def make_runtime(
    broker: Broker, ep_dir: Path, engine: str = "ThreadPoolEngine", **overrides: Any
) -> EndpointRuntime:
    own, settings = split_options(overrides)
    options: dict[str, Any] = dict(
        endpoint_id=str(uuid.uuid4()),
        ep_dir=ep_dir,
        engine=build_engine_from_dict({"type": engine, "max_workers": 2}),
        queues=broker.queues(),
        settings=runtime_settings(**settings),
        config_text="engine: {type: ThreadPoolEngine}\n",
    )
    options.update(own)
    return EndpointRuntime(**options)


def send_squares(broker: Broker, numbers: range) -> dict[str, int]:
    """Send square(i) for each i; return the expected result per task id."""
    expected = {}
    for i in numbers:
        tid, body = task_message(square, i)
        expected[tid] = i * i
        broker.send(tid, body)
    return expected


def run_in_thread(rt: EndpointRuntime) -> threading.Thread:
    t = threading.Thread(target=rt.run, daemon=True)
    t.start()
    return t


def test_every_task_gets_exactly_one_result(broker: Broker, tmp_path: Path) -> None:
    rt = make_runtime(broker, tmp_path)
    thread = run_in_thread(rt)
    expected = send_squares(broker, range(300))
    results = broker.collect(300)
    rt.request_stop()
    thread.join(30)
    got = {r.task_id: deserialize(r.data) for r in results}
    assert len(results) == 300 and got == expected
    assert broker.queue_depth(broker.tasks) == 0
    assert Journal(tmp_path / "journal.db").count() == 0


def test_heartbeats_carry_engine_state_and_the_last_says_inactive(
    broker: Broker, tmp_path: Path
) -> None:
    rt = make_runtime(broker, tmp_path)
    thread = run_in_thread(rt)
    time.sleep(0.5)
    rt.request_stop()
    thread.join(30)
    from endpoint.protocol.messages import EPStatusReport

    reports = []
    while True:
        method, _p, body = broker.ch.basic_get(broker.beats, auto_ack=True)
        if method is None:
            break
        reports.append(unpack_as(body, EPStatusReport))
    assert reports[0].global_state["active"] is True
    assert reports[0].global_state["total_workers"] == 2
    assert reports[-1].global_state["active"] is False


def test_missing_headers_are_dead_lettered_and_the_endpoint_keeps_running(
    broker: Broker, tmp_path: Path
) -> None:
    rt = make_runtime(broker, tmp_path)
    thread = run_in_thread(rt)
    broker.ch.basic_publish("", broker.tasks, b"junk", pika.BasicProperties(headers={}))
    tid, body = task_message(square, 3)
    broker.send(tid, body)
    (res,) = broker.collect(1)
    assert res.task_id == tid and deserialize(res.data) == 9
    rt.request_stop()
    thread.join(30)
    assert broker.queue_depth(broker.tasks) == 0


def test_a_malformed_body_gets_a_failure_result(broker: Broker, tmp_path: Path) -> None:
    rt = make_runtime(broker, tmp_path)
    thread = run_in_thread(rt)
    tid = str(uuid.uuid4())
    broker.send(tid, b"\x01not json at all")
    (res,) = broker.collect(1)
    rt.request_stop()
    thread.join(30)
    assert res.task_id == tid and res.error_details is not None


def test_recovery_resends_journaled_results_and_runs_unstarted_tasks(
    broker: Broker, tmp_path: Path
) -> None:
    done_id = str(uuid.uuid4())
    done_result = pack(Result(task_id=done_id, data=serialize(7)))
    fresh_id, fresh_body = task_message(square, 5)
    journal = Journal(tmp_path / "journal.db")
    with journal.batch() as b:
        b.add_tasks(
            [
                JournaledTask(done_id, "f", b"", [], None),
                JournaledTask(fresh_id, "f", fresh_body, [], None),
            ],
            started={done_id},
        )
        b.set_results([(done_id, done_result)])
    journal.close()
    rt = make_runtime(broker, tmp_path)
    thread = run_in_thread(rt)
    results = {r.task_id: deserialize(r.data) for r in broker.collect(2)}
    rt.request_stop()
    thread.join(30)
    assert results == {done_id: 7, fresh_id: 25}
    assert Journal(tmp_path / "journal.db").count() == 0


def test_broker_outage_is_survived_without_loss_or_duplicates(
    rabbit: Any, broker: Broker, tmp_path: Path
) -> None:
    rt = make_runtime(broker, tmp_path)
    thread = run_in_thread(rt)
    expected = send_squares(broker, range(50))
    first = broker.collect(50)
    broker.conn.close()
    rabbit.stop_app()  # the broker goes away under the running endpoint
    time.sleep(3)
    rabbit.start_app()
    again = Broker(broker.url, broker.tasks.rsplit(".", 1)[0])
    expected |= send_squares(again, range(50, 100))
    second = again.collect(50, timeout=60)
    rt.request_stop()
    thread.join(30)
    time.sleep(0.5)
    second += again.collect(1, timeout=1)  # anything extra would be a duplicate
    got = [(r.task_id, deserialize(r.data)) for r in first + second]
    assert len(got) == 100 and dict(got) == expected
    again.conn.close()


def test_idle_endpoint_stops_itself_after_its_work_is_done(broker: Broker, tmp_path: Path) -> None:
    rt = make_runtime(broker, tmp_path, heartbeat_period=0.3, idle_heartbeats_soft=3)
    thread = run_in_thread(rt)
    expected = send_squares(broker, range(3))
    results = broker.collect(3)
    assert {r.task_id: deserialize(r.data) for r in results} == expected
    thread.join(timeout=10)
    assert not thread.is_alive(), "the idle endpoint kept running"
    assert "idle_heartbeats_soft=3" in rt.stop_reason
    beats = []
    while (msg := broker.ch.basic_get(broker.beats, auto_ack=True))[0] is not None:
        beats.append(msg[2])
    last = unpack_as(beats[-1], EPStatusReport)
    assert last.global_state["active"] is False


def test_busy_endpoint_is_not_idle(broker: Broker, tmp_path: Path) -> None:
    rt = make_runtime(broker, tmp_path, heartbeat_period=0.2, idle_heartbeats_soft=2)
    thread = run_in_thread(rt)
    try:
        tid, body = task_message(time.sleep, 1.5)
        broker.send(tid, body)
        time.sleep(1.0)  # five heartbeats, all with the task outstanding
        assert thread.is_alive()
        assert len(broker.collect(1)) == 1
    finally:
        rt.request_stop()
        thread.join(timeout=30)


def test_paths_endpoint_dir_holds_the_journal_and_task_dirs(broker: Broker, tmp_path: Path) -> None:
    work = tmp_path / "scratch" / "ep"
    (tmp_path / "conf").mkdir()
    rt = make_runtime(broker, tmp_path / "conf", work_dir=work)
    thread = run_in_thread(rt)
    try:
        expected = send_squares(broker, range(2))
        assert {r.task_id: deserialize(r.data) for r in broker.collect(2)} == expected
    finally:
        rt.request_stop()
        thread.join(timeout=30)
    assert (work / "journal.db").exists() and not (tmp_path / "conf" / "journal.db").exists()
    assert (work / "tasks_working_dir").is_dir()
