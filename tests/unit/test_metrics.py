"""The metrics modules' pure parts: failure reasons, stage timings, the /metrics access rule."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from endpoint.config import EndpointConfig
from endpoint.manager.metrics import (
    NO_MANAGER_METRICS,
    ManagerMetrics,
    UserEndpointCollector,
    manager_metrics_for,
)
from endpoint.protocol.messages import Result, pack
from endpoint.protocol.results import error_result
from endpoint.runtime.interchange import Delivery, Interchange
from endpoint.runtime.metrics import (
    NO_METRICS,
    OTHER_REASON,
    EndpointMetrics,
    MetricsError,
    StatusCollector,
    failure_reason,
    metrics_for,
)
from webservice import metrics as service_metrics
from webservice.errors import ServiceError
from webservice.metrics import MetricsTokenError, read_token

EPID = str(uuid.uuid4())
TOKEN = "unit-metrics-token-0123456789"


def ok(task_id: str, data: str = "gAR9lC4=") -> bytes:
    return pack(Result(task_id=task_id, data=data))


def test_a_success_has_no_reason_whatever_its_data_says() -> None:
    tid = str(uuid.uuid4())
    assert failure_reason(ok(tid)) is None
    # Quotes inside data are escaped by JSON, so data cannot fake the field.
    assert failure_reason(ok(tid, '"error_details":{"code":"TaskTimeout"}')) is None
    assert failure_reason(ok(tid, "x" * 1_000_000)) is None


def test_a_failure_has_its_code_or_other() -> None:
    tid = str(uuid.uuid4())
    assert failure_reason(error_result(tid, "TaskTooLarge", "big", EPID)) == "TaskTooLarge"
    assert failure_reason(error_result(tid, "made-up-by-a-worker", "x", EPID)) == OTHER_REASON


def test_no_metrics_port_means_no_metrics_object() -> None:
    cfg = EndpointConfig.model_validate({"engine": {"type": "ThreadPoolEngine"}})
    assert cfg.metrics_port is None and cfg.metrics_address == "127.0.0.1"
    assert metrics_for(cfg.metrics_address, cfg.metrics_port) is NO_METRICS
    assert isinstance(metrics_for("127.0.0.1", 0), EndpointMetrics)
    with pytest.raises(ValueError):
        EndpointConfig.model_validate({"engine": {"type": "ThreadPoolEngine"}, "metrics_port": -1})


def _delivery(tag: int, task_id: str) -> Delivery:
    headers = {"task_uuid": task_id, "function_uuid": str(uuid.uuid4())}
    return Delivery(1, tag, headers, b"body")


def _count(m: EndpointMetrics, name: str) -> float:
    return m.registry.get_sample_value(name) or 0.0


def test_each_histogram_counts_each_task_once_through_the_interchange() -> None:
    m = EndpointMetrics("127.0.0.1", 0)
    ix = Interchange(EPID, window=2)
    ix.on_connected()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    m.on_plan(ix.on_deliveries([_delivery(i, t) for i, t in enumerate(ids, 1)]))
    assert _count(m, "compute_endpoint_task_queue_wait_seconds_count") == 2  # the window
    first = ix.on_results([(ids[0], ok(ids[0])), (ids[1], error_result(ids[1], "x", "", EPID))])
    m.on_plan(first)  # the third task starts as two finish
    m.on_plan(ix.on_results([(ids[2], ok(ids[2]))]))
    # A reconnect republishes: confirms of the same results must not count twice.
    ix.on_disconnected()
    m.on_plan(ix.on_connected())
    m.on_plan(ix.on_confirms(ids, ok=True))
    m.on_plan(ix.on_confirms(ids, ok=True))
    for name in ("task_queue_wait", "task_run", "result_publish"):
        assert _count(m, f"compute_endpoint_{name}_seconds_count") == 3, name
    assert _count(m, "compute_endpoint_tasks_succeeded_total") == 2
    assert m.registry.get_sample_value("compute_endpoint_tasks_failed_total", {"reason": "other"})
    assert not (m._queued or m._running or m._publishing)  # nothing is kept after a confirm


def test_a_refused_task_has_no_wait_or_run_time() -> None:
    m = EndpointMetrics("127.0.0.1", 0)
    ix = Interchange(EPID, window=2, max_task_size=1)
    ix.on_connected()
    tid = str(uuid.uuid4())
    m.on_plan(ix.on_deliveries([_delivery(1, tid)]))  # b"body" > 1 byte: TaskTooLarge
    m.on_plan(ix.on_confirms([tid], ok=True))
    assert _count(m, "compute_endpoint_task_run_seconds_count") == 0
    assert _count(m, "compute_endpoint_result_publish_seconds_count") == 1
    labels = {"reason": "TaskTooLarge"}
    assert m.registry.get_sample_value("compute_endpoint_tasks_failed_total", labels) == 1


# ---- the web service's access rule ---------------------------------------------------------


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)  # as webservice.app renders it
    return JSONResponse(exc.body(), status_code=exc.status)


def _app(token_file: str | None) -> FastAPI:
    app = FastAPI()
    service_metrics.install(app, token_file)
    app.add_exception_handler(ServiceError, _service_error)
    return app


def _get(app: FastAPI, client: str, headers: dict[str, str] | None = None) -> int:
    async def get() -> int:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            return (await c.get("/metrics", headers=headers or {})).status_code

    return asyncio.run(get())


def test_without_a_token_only_loopback_clients_are_answered() -> None:
    app = _app(None)
    assert _get(app, "127.0.0.1") == 200
    assert _get(app, "::1") == 200
    # Another host (or a spoofed header from it) is refused.
    assert _get(app, "192.0.2.7") == 403
    assert _get(app, "192.0.2.7", {"X-Forwarded-For": "127.0.0.1"}) == 403


def _token_file(tmp_path: Path, mode: int = 0o600, text: str = TOKEN) -> str:
    path = tmp_path / "token"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_with_a_token_every_client_needs_it(tmp_path: Path) -> None:
    app = _app(_token_file(tmp_path))
    assert _get(app, "127.0.0.1") == 401
    assert _get(app, "192.0.2.7", {"Authorization": "Bearer wrong"}) == 401
    assert _get(app, "192.0.2.7", {"Authorization": f"Bearer {TOKEN}"}) == 200


def test_a_token_file_others_can_read_or_a_short_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MetricsTokenError, match="0600"):
        read_token(_token_file(tmp_path, 0o644))
    with pytest.raises(MetricsTokenError, match="shorter"):
        read_token(_token_file(tmp_path, 0o600, "short"))
    link = tmp_path / "link"
    link.symlink_to(_token_file(tmp_path))
    with pytest.raises(MetricsTokenError):
        read_token(str(link))


# ---- gauges from the status snapshot -------------------------------------------------------


class FakeRuntime:
    """What `StatusCollector` reads: the last status.json document and the interchange."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.last_status = doc
        self.ix = Interchange(EPID, window=1)


SNAPSHOT: dict[str, Any] = {
    "amqp_sessions": {"amqp-tasks": True, "amqp-heartbeats": False},
    "amqp_consuming": True,
    "last_heartbeat_unix": 0.0,
    "engine": {
        "total_workers": 4,
        "idle_workers": 1,
        "blocks": {"RUNNING": 1, "FAILED": 2},
        "containers": {
            "warm_pools": 2,
            "cold_starts": 3,
            "cold_start_seconds": 4.5,
            "evictions": 1,
        },
    },
    "engine_breaker": {"state": "open", "kind": "blocks", "trips": 2},
}


def test_the_snapshot_becomes_gauges() -> None:
    m = EndpointMetrics("127.0.0.1", 0)
    m.registry.register(StatusCollector(FakeRuntime(SNAPSHOT), [0.0]))
    get = m.registry.get_sample_value
    assert get("compute_endpoint_amqp_session_up", {"session": "amqp-heartbeats"}) == 0
    assert get("compute_endpoint_engine_workers", {"state": "busy"}) == 3
    assert get("compute_endpoint_blocks", {"state": "failed"}) == 2
    assert get("compute_endpoint_blocks_failed") == 2
    assert get("compute_endpoint_container_pools_warm") == 2
    assert get("compute_endpoint_container_cold_starts_total") == 3
    assert get("compute_endpoint_container_cold_start_seconds_total") == 4.5
    assert get("compute_endpoint_container_evictions_total") == 1
    assert get("compute_endpoint_breaker_open", {"kind": "blocks"}) == 1
    assert get("compute_endpoint_breaker_trips") == 2
    assert (get("compute_endpoint_credentials_age_seconds") or 0) > 0
    assert (get("compute_endpoint_last_heartbeat_age_seconds") or 0) > 0


def test_an_empty_snapshot_still_scrapes() -> None:
    m = EndpointMetrics("127.0.0.1", 0)
    m.registry.register(StatusCollector(FakeRuntime({}), [0.0]))
    assert m.registry.get_sample_value("compute_endpoint_tasks_received_total") == 0
    assert m.registry.get_sample_value("compute_endpoint_last_heartbeat_age_seconds") is None


def test_reconnects_count_connects_after_the_first() -> None:
    m = EndpointMetrics("127.0.0.1", 0)
    for up in (True, False, True, False, True):
        m.session_changed("amqp-tasks", up)
    labels = {"session": "amqp-tasks"}
    assert m.registry.get_sample_value("compute_endpoint_amqp_reconnects_total", labels) == 2


def test_a_manager_counts_user_endpoints_by_state() -> None:
    m = ManagerMetrics("127.0.0.1", 0)
    ueps = {"a": SimpleNamespace(stopping=False), "b": SimpleNamespace(stopping=True)}
    m.registry.register(UserEndpointCollector(SimpleNamespace(ueps=ueps)))
    m.start_failed("refused")
    m.spawned(0.25)
    get = m.registry.get_sample_value
    assert get("compute_endpoint_user_endpoints", {"state": "running"}) == 1
    assert get("compute_endpoint_user_endpoints", {"state": "stopping"}) == 1
    assert get("compute_endpoint_user_endpoint_start_failures_total", {"reason": "refused"}) == 1
    assert get("compute_endpoint_user_endpoint_spawn_seconds_count") == 1
    assert manager_metrics_for("127.0.0.1", None) is NO_MANAGER_METRICS


def test_a_taken_port_is_an_endpoint_error_and_a_free_one_is_reported() -> None:
    first = EndpointMetrics("127.0.0.1", 0)
    first.start(FakeRuntime({}))
    try:
        where = first.where()
        assert where is not None and where["address"] == "127.0.0.1" and where["port"] > 0
        with pytest.raises(MetricsError, match="cannot serve metrics"):
            EndpointMetrics("127.0.0.1", where["port"]).start(FakeRuntime({}))
    finally:
        first.stop()
    assert first.where() is None
