"""The service keeps its state across its own restart, and loses no result meanwhile."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pika
import pytest

from devstack.testing import ApiClient, ServiceThread
from endpoint.protocol.messages import Result, pack
from webservice.broker import PrivateRabbit
from webservice.settings import Settings

pytestmark = pytest.mark.integration

CODE = "12\n01\ngASVAA==\n"


def _get_one(ch: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> bytes:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return bytes(body)
        time.sleep(0.02)
    raise AssertionError(f"nothing on {queue}")


def _result(task_id: str, value: str) -> bytes:
    return pack(Result(task_id=task_id, data=f"11\n{value}"))


def test_results_survive_a_restart_and_results_sent_while_down_are_not_lost(
    rabbit: PrivateRabbit, tmp_path: Path
) -> None:
    settings = Settings(
        amqp_url=rabbit.url, db_path=str(tmp_path / "ws.db"), queue_prefix="tg.restart."
    )
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    ch = conn.channel()
    try:
        with ServiceThread(settings) as svc, svc.new_identity() as api:
            ep = api.register_endpoint()["endpoint_id"]
            fid = api.register_function(CODE)
            reply = api.submit(ep, {fid: ["a", "b"]}).json()
            first, second = reply["tasks"][fid]
            queue = f"tg.restart.{reply['task_group_id']}"
            ch.basic_publish("results", f"{ep}.results", _result(first, "1"))
            assert _get_one(ch, queue) == _result(first, "1")
            token = api.token

        # The service is down: the endpoint's result waits in the durable `results` queue.
        ch.basic_publish(
            "results", f"{ep}.results", _result(second, "2"), pika.BasicProperties(delivery_mode=2)
        )

        with ServiceThread(settings) as svc, ApiClient(svc.url, api.identity, token) as again:
            assert _get_one(ch, queue) == _result(second, "2")
            assert again.get(f"/v2/tasks/{first}").json()["result"] == "11\n1"
            assert again.get(f"/v2/tasks/{second}").json()["result"] == "11\n2"
            assert again.get(f"/v2/endpoints/{ep}").status_code == 200
            # Still exactly one copy of each result on the SDK's queue.
            assert ch.queue_declare(queue, passive=True).method.message_count == 0
    finally:
        conn.close()


def test_a_submit_while_the_broker_is_unreachable_is_503_not_500_and_all_recovers(
    tmp_path: Path, rabbit: PrivateRabbit
) -> None:
    settings = Settings(
        amqp_url=rabbit.url, db_path=str(tmp_path / "ws.db"), queue_prefix="tg.outage."
    )
    with ServiceThread(settings) as svc, svc.new_identity() as api:
        ep = api.register_endpoint()["endpoint_id"]
        fid = api.register_function(CODE)
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
        # The result consumer came back too.
        reply = resp.json()
        tid = reply["tasks"][fid][0]
        conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
        try:
            ch = conn.channel()
            ch.basic_publish("results", f"{ep}.results", _result(tid, "3"))
            assert _get_one(ch, f"tg.outage.{reply['task_group_id']}") == _result(tid, "3")
        finally:
            conn.close()
