"""A failed engine is replaced by the runtime, also behind container routing.

Drift bug fixed in issue 12: the runtime asked `broken()`, `RoutingEngine` forwarded only
`failure()`, so with `container_routing` on, a dead HTEX interchange was never replaced and
every later task failed. There is now one question (`Engine.failure()`), forwarded by every
wrapper. Real processes: Parsl's interchange and a LocalProvider block on loopback, a private
RabbitMQ.
"""

from __future__ import annotations

import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest

from endpoint.engines.base import Engine
from endpoint.engines.build import build_engine_from_dict
from endpoint.engines.routing import RoutingEngine
from endpoint.protocol.serialize import deserialize
from tests.integration import test_runtime
from tests.integration.test_runtime import Broker, make_runtime, run_in_thread, send_squares
from tests.processes import descendants_running

broker = test_runtime.broker  # the fixture: the service's side of a real RabbitMQ

GCE: dict[str, Any] = {
    "type": "GlobusComputeEngine",
    "max_workers_per_node": 2,
    "address": "127.0.0.1",
    "heartbeat_period": 1,
    "provider": {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 0, "max_blocks": 1},
    "job_status_kwargs": {"strategy_period": 0.5},
}
#: The same engine behind soft routing; tasks that name no image run in the default pool,
#: here on this host (no container_uri), so no container runtime is needed.
ROUTED: dict[str, Any] = {**GCE, "container_type": "docker", "container_routing": "soft"}


def interchanges() -> list[psutil.Process]:
    return descendants_running("interchange")


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("spec", [GCE, ROUTED], ids=["plain", "behind-routing"])
def test_a_killed_interchange_is_replaced_and_later_tasks_succeed(
    broker: Broker, tmp_path: Path, spec: dict[str, Any]
) -> None:
    engine: Engine = build_engine_from_dict(spec)
    assert isinstance(engine, RoutingEngine) == ("container_routing" in spec)
    rt = make_runtime(broker, tmp_path, engine_factory=partial(build_engine_from_dict, spec))
    rt.engine = engine  # the runtime starts whichever engine it holds when it runs
    others = {p.pid for p in interchanges()}  # earlier tests' engines may still be stopping
    thread = run_in_thread(rt)
    try:
        first = send_squares(broker, range(3))
        got = {r.task_id: deserialize(r.data) for r in broker.collect(3, timeout=120)}
        assert got == first
        victims = [p for p in interchanges() if p.pid not in others]
        assert len(victims) == 1, victims
        victims[0].send_signal(signal.SIGKILL)
        wait_for(lambda: rt.engine is not engine, 120, "the runtime to replace the engine")
        later = send_squares(broker, range(10, 15))
        results = broker.collect(5, timeout=180)
        assert all(r.error_details is None for r in results), [r.data for r in results]
        assert {r.task_id: deserialize(r.data) for r in results} == later
    finally:
        rt.request_stop()
        thread.join(60)
    assert not thread.is_alive()
