"""A zero-work endpoint: answers every task at once with a canned result.

Run beside the real endpoints, it measures the floor that the shared parts (web service,
broker, SDK) put under every endpoint's figures on this machine.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import pika

from devstack.stack import Stack
from endpoint.protocol.messages import EPStatusReport, Result, pack
from endpoint.protocol.serialize import serialize


def register(stack: Stack) -> dict[str, Any]:
    body = json.dumps({"endpoint_name": "echo", "metadata": {"endpoint_mode": "single_user"}})
    req = urllib.request.Request(
        f"{stack.url}/v3/endpoints",
        data=body.encode(),
        method="POST",
        headers={"Authorization": f"Bearer {stack.token()}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        reg: dict[str, Any] = json.load(resp)
    return reg


def serve(reg: dict[str, Any], stop: threading.Event) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(reg["task_queue_info"]["connection_url"]))
    ch = conn.channel()
    results = reg["result_queue_info"]["queue_publish_kwargs"]
    beats = reg["heartbeat_queue_info"]["queue_publish_kwargs"]
    report = EPStatusReport(reg["endpoint_id"], {"heartbeat_period": 30})
    ch.basic_publish(beats["exchange"], beats["routing_key"], pack(report))
    data = serialize(None)
    persistent = pika.BasicProperties(delivery_mode=2)
    for method, props, _body in ch.consume(reg["task_queue_info"]["queue"], inactivity_timeout=0.2):
        if stop.is_set():
            break
        if method is None:
            continue
        answer = pack(Result(task_id=props.headers["task_uuid"], data=data))
        ch.basic_publish(results["exchange"], results["routing_key"], answer, persistent)
        ch.basic_ack(method.delivery_tag)
    conn.close()


def start(stack: Stack) -> tuple[str, threading.Event]:
    reg = register(stack)
    stop = threading.Event()
    threading.Thread(target=serve, args=(reg, stop), daemon=True).start()
    stack.wait_online(reg["endpoint_id"])
    return str(reg["endpoint_id"]), stop
