"""The runtime against a real RabbitMQ when the broker side goes wrong (issue 13).

* the task queue is deleted under a running endpoint: the broker cancels the consumer, health
  turns bad, the endpoint declares the queue again and tasks flow once more;
* a task id that is not a UUID is dead-lettered at delivery, with one log line, instead of
  running and retrying a result that can never be published.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from endpoint.host import status
from endpoint.host.status import judge
from endpoint.protocol.serialize import deserialize
from tests.integration.test_runtime import (
    Broker,
    broker,
    make_runtime,
    run_in_thread,
    send_squares,
    square,
    task_message,
)

__all__ = ["broker"]  # the fixture, shared with test_runtime.py


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class StatusLog:
    """Every status.json the runtime writes, in order (a bad spell may be shorter than a poll)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.docs: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        real = status.write_status

        def record(ep_dir: Path, doc: dict[str, Any]) -> None:
            with self._lock:
                self.docs.append(dict(doc))
            real(ep_dir, doc)

        monkeypatch.setattr("endpoint.runtime.adapter.write_status", record)

    def verdicts(self) -> list[str]:
        with self._lock:
            docs = list(self.docs)
        # Freshness is not the point here: judge each document as of its own writing.
        return [
            judge(d, alive=True, now=d["updated_unix"]).reason
            for d in docs
            if d.get("state") == "running"
        ]

    def healthy(self) -> bool:
        found = self.verdicts()
        return bool(found) and "healthy" in found[-1]


@pytest.mark.parametrize("exchange", ["", "tasks"])
def test_a_deleted_task_queue_turns_health_bad_then_is_declared_again(
    broker: Broker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: Any,
    unique: str,
    exchange: str,
) -> None:
    """With ``exchange`` the tasks come through a direct exchange (as from the service) and
    the re-declared queue must be bound again; without, the default exchange routes them."""
    caplog.set_level(logging.INFO, logger="endpoint.amqp.session")
    statuses = StatusLog(monkeypatch)
    queues = broker.queues()
    if exchange:
        exchange = f"{unique}.{exchange}"
        # Not auto-delete: deleting the queue removes the exchange's only binding.
        broker.ch.exchange_declare(exchange, "direct", durable=True)
        broker.ch.queue_bind(broker.tasks, exchange, broker.tasks)
        broker.exchange = exchange
        queues = dataclasses.replace(
            queues, tasks=dataclasses.replace(queues.tasks, exchange=exchange)
        )
    rt = make_runtime(broker, tmp_path, heartbeat_period=0.5, queues=queues)
    thread = run_in_thread(rt)
    try:
        wait_for(statuses.healthy, "a healthy status")
        expected = send_squares(broker, range(3))
        assert {r.task_id: deserialize(r.data) for r in broker.collect(3)} == expected
        seen = len(statuses.verdicts())
        broker.ch.queue_delete(broker.tasks)  # as another user holding the old credentials could
        wait_for(
            lambda: any("cancelled" in v for v in statuses.verdicts()[seen:]),
            "health to report the cancelled consumer",
        )
        wait_for(
            lambda: statuses.healthy() and broker.queue_depth(broker.tasks) == 0,
            "the endpoint to declare its queue and consume again",
        )
        expected = send_squares(broker, range(3, 6))
        results = broker.collect(3)
        assert {r.task_id: deserialize(r.data) for r in results} == expected
    finally:
        rt.request_stop()
        thread.join(30)
        if exchange:
            broker.ch.exchange_delete(exchange)
    cancelled = [r for r in caplog.records if "cancelled the consumer" in r.getMessage()]
    assert len(cancelled) == 1 and cancelled[0].levelno == logging.ERROR


def test_a_task_id_that_is_not_a_uuid_is_rejected_at_delivery(
    broker: Broker, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    rt = make_runtime(broker, tmp_path)
    thread = run_in_thread(rt)
    try:
        bad_id = "t" * 300
        broker.send(bad_id, task_message(square, 2)[1])
        tid, body = task_message(square, 3)
        broker.send(tid, body)
        (res,) = broker.collect(1)
        assert res.task_id == tid and deserialize(res.data) == 9
        wait_for(lambda: broker.queue_depth(broker.tasks) == 0, "the queue to empty")
        assert broker.collect(1, timeout=1.5) == []  # no result for the bad id, ever
    finally:
        rt.request_stop()
        thread.join(30)
    lines = [r for r in caplog.records if bad_id[:64] in r.getMessage()]
    assert len(lines) == 1 and "not a UUID" in lines[0].getMessage()
    assert rt.ix.counters["rejected"] == 1
