"""The result forwarder's rules, with a fake broker link (no RabbitMQ)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pika
import pytest

from endpoint.protocol.messages import Result, pack, unpack_as
from webservice import forwarder as forwarder_module
from webservice.amqp import AmqpLink, Delivery
from webservice.errors import BrokerUnavailable
from webservice.forwarder import ResultForwarder
from webservice.store import Store
from webservice.store.tasks import NewTask


@dataclass
class FakeChannel:
    is_open: bool = True
    acks: list[tuple[int, bool]] = field(default_factory=list)
    nacks: list[int] = field(default_factory=list)

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append((tag, multiple))

    def basic_nack(self, tag: int, requeue: bool = True) -> None:
        self.nacks.append(tag)


@dataclass
class FakeLink:
    published: list[tuple[str, bytes, pika.BasicProperties]] = field(default_factory=list)
    fail: bool = False
    callback: Any = None

    async def consume(self, queue: str, prefetch: int, callback: Any) -> None:
        self.callback = callback

    def publish(
        self, exchange: str, routing_key: str, body: bytes, props: pika.BasicProperties
    ) -> asyncio.Future[None]:
        if self.fail:
            raise BrokerUnavailable("down")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        self.published.append((routing_key, body, props))
        return fut


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store.open(":memory:")
    s.tasks.create_group("tg", "alice", time.time())
    s.tasks.set_group_queue("tg", "tg.q")
    yield s
    s.close()


def _task(store: Store) -> str:
    tid = str(uuid.uuid4())
    store.tasks.add([NewTask(tid, "tg", "f", "ep", "ep", "alice", time.time_ns())])
    return tid


def _result(tid: str, data: str = "11\n1") -> bytes:
    return pack(Result(task_id=tid, data=data))


async def _feed(
    store: Store, link: FakeLink, bodies: list[bytes], channel: FakeChannel
) -> ResultForwarder:
    fwd = ResultForwarder(cast(AmqpLink, link), store.tasks, prefetch=100)
    await fwd.start()
    for tag, body in enumerate(bodies, start=1):
        link.callback(Delivery(cast(Any, channel), tag, "ep.results", pika.BasicProperties(), body))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if channel.acks or channel.nacks:
            break
    await fwd.stop()
    return fwd


def test_a_batch_is_stored_forwarded_unchanged_and_acked_with_one_multiple_ack(
    store: Store,
) -> None:
    a, b = _task(store), _task(store)
    link, channel = FakeLink(), FakeChannel()
    asyncio.run(_feed(store, link, [_result(a), _result(b)], channel))
    assert [(rk, body) for rk, body, _ in link.published] == [
        ("tg.q", _result(a)),
        ("tg.q", _result(b)),
    ]
    props = link.published[0][2]
    assert props.delivery_mode == 2
    assert isinstance(props.timestamp, int)
    assert channel.acks == [(2, True)]
    routing = store.tasks.routing([a, b])
    assert all(r.status == "success" and r.published for r in routing.values())


def test_duplicates_malformed_and_unknown_results_are_acked_but_not_forwarded(
    store: Store,
) -> None:
    a = _task(store)
    bodies = [_result(a), _result(a, "11\n2"), b"junk", _result(str(uuid.uuid4()))]
    link, channel = FakeLink(), FakeChannel()
    asyncio.run(_feed(store, link, bodies, channel))
    assert [body for _, body, _ in link.published] == [_result(a)]
    assert channel.acks == [(4, True)]
    task = store.tasks.get(a)
    assert task is not None and task.result == "11\n1"


def test_a_result_already_forwarded_before_a_restart_is_not_forwarded_again(
    store: Store,
) -> None:
    a = _task(store)
    asyncio.run(_feed(store, FakeLink(), [_result(a)], FakeChannel()))
    link, channel = FakeLink(), FakeChannel()
    asyncio.run(_feed(store, link, [_result(a)], channel))
    assert link.published == []
    assert channel.acks == [(1, True)]


def test_a_stored_but_unforwarded_result_is_forwarded_on_redelivery(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forwarder_module, "REQUEUE_DELAY_S", 0)
    a = _task(store)
    down, channel = FakeLink(fail=True), FakeChannel()
    asyncio.run(_feed(store, down, [_result(a)], channel))
    assert channel.nacks == [1]  # requeued, not dropped
    stored = store.tasks.get(a)
    assert stored is not None and stored.status == "success"
    link, channel = FakeLink(), FakeChannel()
    asyncio.run(_feed(store, link, [_result(a)], channel))
    assert [body for _, body, _ in link.published] == [_result(a)]
    assert store.tasks.routing([a])[a].published


def test_fail_tasks_publishes_failures_for_tasks_without_a_result(store: Store) -> None:
    done, waiting = _task(store), _task(store)
    link = FakeLink()

    async def run() -> None:
        fwd = ResultForwarder(cast(AmqpLink, link), store.tasks, prefetch=100)
        await fwd.start()
        link.callback(
            Delivery(cast(Any, FakeChannel()), 1, "x", pika.BasicProperties(), _result(done))
        )
        await fwd.fail_tasks([done, waiting], "uep", "EndpointStartupFailure", "no start")
        await fwd.stop()

    asyncio.run(run())
    assert len(link.published) == 2
    failure = unpack_as(link.published[1][1], Result)
    assert failure.task_id == waiting
    assert failure.error_details == {"code": "EndpointStartupFailure", "user_message": "no start"}
    task = store.tasks.get(waiting)
    assert task is not None and task.status == "failed" and task.exception == "no start"
