"""Bad AMQP deliveries against a running endpoint runtime on a real RabbitMQ.

Each case of reliability.md "Bad input" is sent to one endpoint, followed by a good task: the
bad one gets a failure result with a clear code and message (or is dead-lettered when no task
id can be read), and the good one after it still gets its answer, so one bad delivery never
breaks the endpoint for everyone else.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest

from endpoint.engines.build import build_engine_from_dict
from endpoint.protocol.messages import EPStatusReport, Result, Task, pack
from endpoint.protocol.serialize import STRATEGIES, deserialize, pack_buffers, serialize
from endpoint.runtime.adapter import EndpointRuntime
from tests.integration.test_runtime import Broker, square, task_message
from tests.runtime_helpers import runtime_settings

pytestmark = pytest.mark.fault

#: Small so that the giant payload case stays quick; the default limit is 10 MiB.
MAX_TASK_SIZE = 256 * 1024


@dataclass(frozen=True)
class Bad:
    """One bad delivery: its body and header overrides, and the expected error (or None)."""

    body: bytes
    headers: dict[str, Any]
    code: str | None  # None: no result at all; the delivery must be dead-lettered
    says: str = ""  # a fragment the error message must contain


def _buffer(fn: str, args: str, kwargs: str) -> str:
    return pack_buffers([fn, args, kwargs])


def _task(buffer: str, task_id: str = "") -> bytes:
    return pack(Task(task_id=task_id or str(uuid.uuid4()), task_buffer=buffer))


GOOD_BUFFER = _buffer(serialize(square), serialize((4,)), serialize({}))
JSON_ARGS = STRATEGIES["11\n"].serialize([4])

CASES: dict[str, Bad] = {
    "not messagepack": Bad(b"\x89PNG\r\n\x1a\n not a message", {}, "CouldNotExecuteUserTaskError"),
    "bad json": Bad(b"\x01{not json", {}, "CouldNotExecuteUserTaskError", "not JSON"),
    "empty body": Bad(b"", {}, "CouldNotExecuteUserTaskError"),
    "a Result instead of a Task": Bad(
        pack(Result(task_id=str(uuid.uuid4()), data=serialize(1))),
        {},
        "CouldNotExecuteUserTaskError",
        "Non Task-type message",
    ),
    "an EPStatusReport instead of a Task": Bad(
        pack(EPStatusReport(endpoint_id=str(uuid.uuid4()), global_state={})),
        {},
        "CouldNotExecuteUserTaskError",
        "Non Task-type message",
    ),
    "missing task_uuid": Bad(_task(GOOD_BUFFER), {"task_uuid": None}, None),
    "missing function_uuid": Bad(_task(GOOD_BUFFER), {"function_uuid": None}, None),
    "giant payload": Bad(
        _task(_buffer(serialize(square), serialize(("x" * 2 * MAX_TASK_SIZE,)), serialize({}))),
        {},
        "TaskTooLarge",
        f"limit of {MAX_TASK_SIZE} bytes",
    ),
    "resource_specification not JSON": Bad(
        _task(GOOD_BUFFER),
        {"resource_specification": "{num_nodes: 2"},
        "InvalidTaskHeaders",
        "resource_specification",
    ),
    "resource_specification a list": Bad(
        _task(GOOD_BUFFER),
        {"resource_specification": "[1, 2]"},
        "InvalidTaskHeaders",
        "resource_specification",
    ),
    "result_serializers not a list": Bad(
        _task(GOOD_BUFFER),
        {"result_serializers": 7},
        "InvalidTaskHeaders",
        "result_serializers",
    ),
    "truncated buffer": Bad(
        _task(GOOD_BUFFER[: len(GOOD_BUFFER) // 2]),
        {},
        "DeserializationError",
        "truncated",
    ),
    "two buffers instead of three": Bad(
        _task(pack_buffers([serialize(square), serialize((4,))])),
        {},
        "DeserializationError",
        "3 buffers",
    ),
    "unknown serialization header": Bad(
        _task(_buffer("zz\nwhatever", serialize((4,)), serialize({}))),
        {},
        "DeserializationError",
        "unknown serialization header",
    ),
    "disallowed serializer": Bad(
        _task(_buffer(serialize(square), JSON_ARGS, serialize({}))),
        {},
        "DeserializationError",
        "JSONData is disabled",
    ),
}


@pytest.fixture
def broker(amqp_url: str, unique: str) -> Iterator[Broker]:
    b = Broker(amqp_url, unique)
    yield b
    b.conn.close()


def _start(broker: Broker, ep_dir: Path, **options: Any) -> EndpointRuntime:
    engine = build_engine_from_dict(
        {
            "type": "ThreadPoolEngine",
            "max_workers": 2,
            # No JSONData: the "disallowed serializer" case sends its arguments with it.
            "allowed_serializers": [
                "globus_compute_sdk.*Code",
                "globus_compute_sdk.serialize.DillDataBase64",
            ],
        }
    )
    rt = EndpointRuntime(
        endpoint_id=str(uuid.uuid4()),
        ep_dir=ep_dir,
        engine=engine,
        queues=broker.queues(),
        settings=runtime_settings(**options),
        config_text="engine: {type: ThreadPoolEngine}\n",
    )
    threading.Thread(target=rt.run, daemon=True, name="endpoint-under-test").start()
    return rt


def _stop(rt: EndpointRuntime) -> None:
    rt.request_stop()
    for t in threading.enumerate():
        if t.name == "endpoint-under-test":
            t.join(30)
            assert not t.is_alive(), "the endpoint did not stop"


@pytest.fixture
def endpoint(broker: Broker, tmp_path: Path) -> Iterator[EndpointRuntime]:
    """One runtime serves every case, so a case that broke it fails the next good task."""
    rt = _start(broker, tmp_path, max_task_size=MAX_TASK_SIZE)
    yield rt
    _stop(rt)


def _send(broker: Broker, task_id: str, bad: Bad) -> None:
    headers = {
        "task_uuid": task_id,
        "function_uuid": str(uuid.uuid4()),
        "resource_specification": "null",
        "result_serializers": [],
        **bad.headers,
    }
    headers = {k: v for k, v in headers.items() if v is not None}
    broker.ch.basic_publish(
        "", broker.tasks, bad.body, pika.BasicProperties(headers=headers, delivery_mode=2)
    )


def _good_task_answers(broker: Broker) -> Callable[[list[Result]], None]:
    tid, body = task_message(square, 12)
    broker.send(tid, body)

    def check(results: list[Result]) -> None:
        good = [r for r in results if r.task_id == tid]
        assert len(good) == 1, "the good task after a bad one got no result"
        assert good[0].error_details is None and deserialize(good[0].data) == 144

    return check


@pytest.mark.parametrize("case", list(CASES))
def test_bad_delivery_gets_a_clear_error_and_the_endpoint_keeps_serving(
    broker: Broker, endpoint: EndpointRuntime, case: str
) -> None:
    bad = CASES[case]
    bad_id = str(uuid.uuid4())
    _send(broker, bad_id, bad)
    check_good = _good_task_answers(broker)
    results = broker.collect(2 if bad.code else 1, timeout=30)
    check_good(results)
    bad_results = [r for r in results if r.task_id == bad_id]
    if bad.code is None:
        assert bad_results == []
        assert endpoint.ix.counters["rejected"] == 1
        # Rejected without requeue: not left on the queue to loop forever.
        assert broker.queue_depth(broker.tasks) == 0
    else:
        assert len(bad_results) == 1, f"{case}: no result for the bad task ({results})"
        details = bad_results[0].error_details
        assert details is not None, f"{case}: the bad task succeeded"
        assert details["code"] == bad.code, details
        assert bad.says in details["user_message"], details["user_message"]
    assert broker.collect(1, timeout=0.5) == [], "an extra result appeared"


def test_every_bad_case_in_a_row_on_one_endpoint(broker: Broker, endpoint: EndpointRuntime) -> None:
    """All the bad deliveries interleaved with good tasks: every good one is answered."""
    expected_bad = {}
    checks = []
    for bad in CASES.values():
        bad_id = str(uuid.uuid4())
        _send(broker, bad_id, bad)
        if bad.code:
            expected_bad[bad_id] = bad.code
        checks.append(_good_task_answers(broker))
    results = broker.collect(len(expected_bad) + len(checks), timeout=60)
    for check in checks:
        check(results)
    got_bad = {r.task_id: r.error_details["code"] for r in results if r.error_details}
    assert got_bad == expected_bad
    assert len(results) == len({r.task_id for r in results}), "a task got two results"
    assert endpoint.ix.counters["rejected"] == 2


def test_the_default_limit_refuses_a_task_over_10_mib(broker: Broker, tmp_path: Path) -> None:
    rt = _start(broker, tmp_path)
    try:
        big = _task(_buffer(serialize(square), serialize(("x" * (10 * 2**20),)), serialize({})))
        bad_id = str(uuid.uuid4())
        _send(broker, bad_id, Bad(big, {}, "TaskTooLarge"))
        check_good = _good_task_answers(broker)
        results = broker.collect(2, timeout=30)
        check_good(results)
        (bad,) = [r for r in results if r.task_id == bad_id]
        assert bad.error_details is not None and bad.error_details["code"] == "TaskTooLarge"
        assert f"limit of {10 * 2**20} bytes" in bad.data
    finally:
        _stop(rt)
