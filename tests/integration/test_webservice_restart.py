"""The service keeps its state across its own restart, and loses no result meanwhile."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from devstack.testing import ApiClient, ServiceThread, service_settings
from endpoint.protocol.messages import Result, pack
from webservice.broker import PrivateRabbit
from webservice.settings import Settings

pytestmark = pytest.mark.integration

CODE = "12\n01\ngASVAA==\n"


def _get_one(ch: BlockingChannel, queue: str) -> bytes:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return bytes(body)
        time.sleep(0.02)
    raise AssertionError(f"nothing on {queue}")


def _result(task_id: str, value: str) -> bytes:
    return pack(Result(task_id=task_id, data=f"11\n{value}"))


@contextmanager
def _channel(url: str, confirm: bool = False) -> Iterator[BlockingChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        if confirm:
            ch.confirm_delivery()
        yield ch
    finally:
        if conn.is_open:
            conn.close()


def _publish_result(ch: BlockingChannel, reg: dict[str, Any], body: bytes) -> None:
    """As the endpoint does: on its own routing key, persistent, mandatory (and confirmed, so
    a publish the broker refuses fails here)."""
    kw = reg["result_queue_info"]["queue_publish_kwargs"]
    props = pika.BasicProperties(**kw["properties"])
    ch.basic_publish(kw["exchange"], kw["routing_key"], body, props, mandatory=kw["mandatory"])


def _result_route(api: ApiClient) -> dict[str, str]:
    resp = api.get("/v2/get_amqp_result_connection_url")
    assert resp.status_code == 200, resp.text
    doc: dict[str, str] = resp.json()
    return doc


def test_results_survive_a_restart_and_results_sent_while_down_are_not_lost(
    rabbit: PrivateRabbit, tmp_path: Path
) -> None:
    settings = service_settings(rabbit, tmp_path / "ws.db", queue_prefix="tg.restart.")
    with ExitStack() as stack:
        with ServiceThread(settings) as svc, svc.new_identity() as api:
            reg = api.register_endpoint()
            ep = reg["endpoint_id"]
            fid = api.register_function(CODE)
            reply = api.submit(ep, {fid: ["a", "b"]}).json()
            first, second = reply["tasks"][fid]
            route = _result_route(api)
            queue = f"{route['queue_prefix']}{reply['task_group_id']}"
            # The endpoint and the SDK, each with the account the service handed it.
            ep_ch = stack.enter_context(_channel(reg["result_queue_info"]["connection_url"], True))
            sdk_ch = stack.enter_context(_channel(route["connection_url"]))
            _publish_result(ep_ch, reg, _result(first, "1"))
            assert _get_one(sdk_ch, queue) == _result(first, "1")
            token = api.token

        # The service is down: the endpoint's result waits in the durable `results` queue.
        _publish_result(ep_ch, reg, _result(second, "2"))

        with ServiceThread(settings) as svc, ApiClient(svc.url, api.identity, token) as again:
            assert _get_one(sdk_ch, queue) == _result(second, "2")
            assert again.get(f"/v2/tasks/{first}").json()["result"] == "11\n1"
            assert again.get(f"/v2/tasks/{second}").json()["result"] == "11\n2"
            assert again.get(f"/v2/endpoints/{ep}").status_code == 200
            # The client's account and queue names are the same as before the restart.
            assert _result_route(again) == route
            # Still exactly one copy of each result on the SDK's queue.
            assert sdk_ch.queue_declare(queue, passive=True).method.message_count == 0


def test_a_submit_while_the_broker_is_unreachable_is_503_not_500_and_all_recovers(
    tmp_path: Path, rabbit: PrivateRabbit
) -> None:
    settings = Settings(
        amqp_url=rabbit.url,
        broker_admin_url=rabbit.admin_url,
        db_path=str(tmp_path / "ws.db"),
        queue_prefix="tg.outage.",
    )
    with ServiceThread(settings) as svc, svc.new_identity() as api:
        reg = api.register_endpoint()
        ep = reg["endpoint_id"]
        fid = api.register_function(CODE)
        route = _result_route(api)
        rabbit.stop_app()
        try:
            resp = api.submit(ep, {fid: ["x"]}, task_group_id=str(uuid.uuid4()))
            assert resp.status_code == 503, resp.text
            assert resp.json()["code"] == "BROKER_UNAVAILABLE"
        finally:
            rabbit.start_app()
        # The service reconnects by itself; the SDK's retry of the same submit then succeeds.
        deadline = time.monotonic() + 30
        while (resp := api.submit(ep, {fid: ["x"]})).status_code == 503:
            assert time.monotonic() < deadline, "no reconnect"
            time.sleep(0.5)
        assert resp.status_code == 200, resp.text
        # The result consumer came back too, and the accounts handed out before still work.
        reply = resp.json()
        tid = reply["tasks"][fid][0]
        queue = f"{route['queue_prefix']}{reply['task_group_id']}"
        with (
            _channel(reg["result_queue_info"]["connection_url"], confirm=True) as ep_ch,
            _channel(route["connection_url"]) as sdk_ch,
        ):
            _publish_result(ep_ch, reg, _result(tid, "3"))
            assert _get_one(sdk_ch, queue) == _result(tid, "3")
