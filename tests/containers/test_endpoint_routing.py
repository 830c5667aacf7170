"""The whole endpoint runtime with routing: tasks arrive from a real RabbitMQ with the SDK's
``resource_specification`` header, run in the docker image they name, and the heartbeats
carry the routing counters. (The web service is played by pika, as in test_runtime.py.)"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from endpoint.engines.build import build_engine_from_dict
from endpoint.protocol.messages import EPStatusReport, unpack_as
from endpoint.protocol.serialize import deserialize
from tests.containers.images import ImageSet
from tests.integration import test_runtime
from tests.integration.test_runtime import Broker, make_runtime, run_in_thread
from tests.unit.test_engines import submission

broker = test_runtime.broker  # the fixture: the service's side of a real RabbitMQ


def image_name() -> str:
    with open("/etc/ccep-image") as f:
        return f.read().strip()


def send(service: Broker, image: str | None) -> str:
    sub = submission(image_name)
    spec = json.dumps({"container_image": image}) if image else "null"
    service.send(sub.task_id, sub.packed_task, resource_specification=spec)
    return sub.task_id


def last_heartbeat(service: Broker, timeout: float) -> dict[str, Any]:
    """The newest heartbeat's global_state whose routing counters saw the tasks."""
    deadline = time.monotonic() + timeout
    latest: dict[str, Any] = {}
    while time.monotonic() < deadline:
        method, _props, body = service.ch.basic_get(service.beats, auto_ack=True)
        if method is None:
            if latest.get("containers", {}).get("tasks", 0) >= 3:
                return latest
            service.conn.sleep(0.2)
            continue
        latest = unpack_as(body, EPStatusReport).global_state
    return latest


def test_tasks_run_in_the_image_their_specification_names(
    broker: Broker,
    images: ImageSet,
    tmp_path: Path,
) -> None:
    engine = build_engine_from_dict(
        {
            "type": "ProcessPoolEngine",
            "max_workers": 1,
            "container_type": "docker",
            "container_routing": "soft",
            "max_warm_containers": 2,
        }
    )
    rt = make_runtime(broker, tmp_path)
    rt.engine = engine  # the runtime starts whichever engine it holds when it runs
    thread = run_in_thread(rt)
    a, b = images.marked("a"), images.marked("b")
    sent = {send(broker, a): "a", send(broker, b): "b", send(broker, a): "a"}
    plain = send(broker, None)
    results = {r.task_id: r for r in broker.collect(4, timeout=120)}
    for task_id, name in sent.items():
        assert results[task_id].error_details is None, results[task_id].data
        assert deserialize(results[task_id].data) == name
    # No image: the default pool, on this host, where there is no /etc/ccep-image.
    assert results[plain].error_details is not None
    state = last_heartbeat(broker, timeout=15)
    rt.request_stop()
    thread.join(60)
    counters = state["containers"]
    assert counters["container_routing"] == "soft" and counters["tasks"] == 3
    assert counters["cold_starts"] == 2 and counters["warm_pools"] == 2
    assert {p["image"] for p in counters["pools"]} == {a, b}
