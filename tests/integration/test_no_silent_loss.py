"""No silent loss when a queue disappears behind the service's back (issue 13, finding 6).

Task and command publishes are mandatory: the broker returns what no queue takes, and the
service declares the queue again and re-sends, instead of answering 200 for tasks that vanished
(before: 10 of 10 lost, even across an endpoint restart, because declared queues are cached).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from devstack.testing import ApiClient, ServiceThread, service_settings
from webservice.broker import PrivateRabbit

pytestmark = pytest.mark.integration

CODE = "12\n01\ngASVAA==\n"
PAYLOAD = "28\n00\ngASVBQAAAAAAAABLKIWULg==\n12\n00\ngAR9lC4=\n"


@pytest.fixture(scope="module")
def service(
    rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceThread]:
    db = tmp_path_factory.mktemp("no-loss") / "ws.db"
    settings = service_settings(rabbit, db)
    with ServiceThread(settings) as svc:
        yield svc


@pytest.fixture
def api(service: ServiceThread) -> Iterator[ApiClient]:
    with service.new_identity("loss") as client:
        yield client


def _admin(rabbit: PrivateRabbit) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(rabbit.url))


def _depth(rabbit: PrivateRabbit, queue: str) -> int | None:
    """Ready messages in `queue`; None when it does not exist."""
    conn = _admin(rabbit)
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404
        return None
    finally:
        if conn.is_open:
            conn.close()


def _delete(rabbit: PrivateRabbit, queue: str) -> None:
    conn = _admin(rabbit)
    try:
        conn.channel().queue_delete(queue)
    finally:
        conn.close()


def test_a_deleted_task_queue_is_declared_again_and_no_task_is_lost(
    rabbit: PrivateRabbit, api: ApiClient
) -> None:
    reg = api.register_endpoint()
    ep, queue = reg["endpoint_id"], reg["task_queue_info"]["queue"]
    fid = api.register_function(CODE)
    # One submit first, so the service has the queue in its cache of declared queues.
    assert api.submit(ep, {fid: [PAYLOAD]}).status_code == 200
    assert _depth(rabbit, queue) == 1
    _delete(rabbit, queue)
    assert _depth(rabbit, queue) is None
    reply = api.submit(ep, {fid: [PAYLOAD] * 10})
    assert reply.status_code == 200, reply.text
    # Every task the client was told about is in the queue again (the bound one: the next
    # submit, sent through the `tasks` exchange, lands there too).
    assert _depth(rabbit, queue) == 10
    assert api.submit(ep, {fid: [PAYLOAD]}).status_code == 200
    assert _depth(rabbit, queue) == 11


def _commands(rabbit: PrivateRabbit, queue: str) -> list[dict[str, Any]]:
    conn = _admin(rabbit)
    found: list[dict[str, Any]] = []
    try:
        ch = conn.channel()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not found:
            method, _props, body = ch.basic_get(queue, auto_ack=True)
            if method is not None:
                found.append(json.loads(body))
    finally:
        conn.close()
    return found


def test_a_deleted_command_queue_is_declared_again_and_the_start_command_arrives(
    rabbit: PrivateRabbit, api: ApiClient
) -> None:
    reg = api.register_endpoint(single_user=False)
    manager, queue = reg["endpoint_id"], reg["command_queue_info"]["queue"]
    fid = api.register_function(CODE)
    assert api.submit(manager, {fid: [PAYLOAD]}).status_code == 200
    assert [c["command"] for c in _commands(rabbit, queue)] == ["cmd_start_endpoint"]
    _delete(rabbit, queue)
    reply = api.submit(manager, {fid: [PAYLOAD]})
    assert reply.status_code == 200, reply.text
    assert [c["command"] for c in _commands(rabbit, queue)] == ["cmd_start_endpoint"]
