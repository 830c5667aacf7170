"""status.json written by the runtime against a real RabbitMQ, through an outage."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from endpoint.host.status import judge, read_status
from tests.integration.test_runtime import Broker, broker, make_runtime, run_in_thread

__all__ = ["broker"]  # the fixture, shared with test_runtime.py


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def status(ep_dir: Path) -> dict[str, Any]:
    return read_status(ep_dir) or {}


def test_status_follows_the_broker_and_ends_stopped(
    rabbit: Any, broker: Broker, tmp_path: Path
) -> None:
    rt = make_runtime(broker, tmp_path, heartbeat_period=0.5)
    thread = run_in_thread(rt)
    wait_for(lambda: judge(read_status(tmp_path), alive=True).healthy, 20, "a healthy status")
    doc = status(tmp_path)
    assert doc["endpoint_id"] == rt.endpoint_id and doc["engine"]["total_workers"] == 2
    broker.conn.close()
    rabbit.stop_app()
    try:
        wait_for(lambda: not status(tmp_path).get("amqp_connected"), 20, "a disconnect")
        assert "AMQP not connected" in judge(status(tmp_path), alive=True).reason
    finally:
        rabbit.start_app()
    wait_for(lambda: judge(read_status(tmp_path), alive=True).healthy, 90, "a reconnect")
    rt.request_stop()
    thread.join(30)
    doc = status(tmp_path)
    assert doc["state"] == "stopped" and doc["amqp_connected"] is False
