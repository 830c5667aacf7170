"""``GET /metrics``: the web service's Prometheus metrics, on its own HTTP port.

Requests are counted by route template (``/v2/tasks/{task_id}``, never the raw path), method
and status; submissions get a latency histogram. Tasks by state, endpoints online and offline,
the forwarder's backlog and the broker connection are read from the store and the running parts
when Prometheus scrapes (on the event loop, like any route), so they cost nothing between
scrapes. Labels never carry a task, endpoint or user id.

Who may read it (the figures say how busy the service is and which routes fail):

* with ``--metrics-token-file`` (a private file holding one token): any client presenting
  ``Authorization: Bearer <token>``, compared in constant time; anything else gets 401;
* without it: loopback clients only; any other client gets 403.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import stat
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webservice.api.submit import SUBMIT_PATH
from webservice.errors import Forbidden, ServiceError, Unauthorized
from webservice.liveness import MISSED_PERIODS

log = logging.getLogger(__name__)

PREFIX = "compute_service"
METRICS_PATH = "/metrics"
SUBMIT_ROUTE = SUBMIT_PATH
#: Larger token files are refused before they are read.
MAX_TOKEN_BYTES = 4096
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class MetricsTokenError(ServiceError):
    """``--metrics-token-file`` cannot be used (the service refuses to start)."""

    code = "METRICS_TOKEN"


class MetricsUnauthorized(Unauthorized):
    headers = {"WWW-Authenticate": "Bearer"}


def read_token(path: str) -> bytes:
    """The token of ``--metrics-token-file``: a regular file only its owner may read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise MetricsTokenError(f"cannot open the metrics token file {path}: {e.strerror}") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
            raise MetricsTokenError(
                f"the metrics token file {path} must be a regular file of mode 0600 or stricter"
            )
        if info.st_size > MAX_TOKEN_BYTES:
            raise MetricsTokenError(f"the metrics token file {path} is larger than 4 KiB")
        token = os.read(fd, MAX_TOKEN_BYTES).strip()
    finally:
        os.close(fd)
    if len(token) < 16:
        raise MetricsTokenError(f"the metrics token in {path} is shorter than 16 characters")
    return token


class ServiceMetrics:
    """One app's private registry: counters fed by the middleware, gauges by the collector."""

    def __init__(self, token: bytes | None) -> None:
        self.token = token
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.submit = Histogram(
            f"{PREFIX}_submit_seconds",
            "Time to answer a submission (POST .../submit), any status",
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method if method in _METHODS else "other", str(status)).inc()
        if route == SUBMIT_ROUTE:
            self.submit.observe(seconds)

    def allow(self, request: Request) -> None:
        """Raise unless this client may read the metrics (the module docstring's rule)."""
        if self.token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode("utf-8", "replace"), self.token
            ):
                raise MetricsUnauthorized("a valid metrics token is required")
            return
        host = request.client.host if request.client else ""
        if not _loopback(host):
            raise Forbidden("metrics are served to loopback clients only")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServiceCollector(Collector):
    """Gauges read from the running service when Prometheus scrapes."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        services = getattr(self.app.state, "services", None)
        if services is None:
            return
        conn = services.store.db.conn
        tasks = GaugeMetricFamily(
            f"{PREFIX}_tasks", "Tasks in the store by state", labels=["state"]
        )
        for state, count in conn.execute("SELECT status, count(*) FROM tasks GROUP BY status"):
            tasks.add_metric([str(state)[:32]], count)
        yield tasks
        yield _endpoints(conn, services.settings.default_heartbeat_period_s)
        yield GaugeMetricFamily(
            f"{PREFIX}_forwarder_backlog_results",
            "Results received from endpoints and not yet stored and forwarded",
            value=services.forwarder.backlog,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_forwarder_lag_seconds",
            "How long the oldest result waiting to be stored and forwarded has waited",
            value=services.forwarder.lag_s,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_broker_connected",
            "1 while the service's AMQP connection is ready",
            value=1.0 if services.link.is_ready else 0.0,
        )


def _endpoints(conn: Any, default_period: float) -> GaugeMetricFamily:
    """Endpoints with a heartbeat, online or offline by the rule of `webservice.liveness`."""
    now = time.time()
    online = offline = 0
    for received_at, period, active in conn.execute(
        "SELECT received_at, period, active FROM heartbeats"
    ):
        fresh = now - received_at <= MISSED_PERIODS * (default_period if period is None else period)
        if active and period != 0 and fresh:
            online += 1
        else:
            offline += 1
    family = GaugeMetricFamily(
        f"{PREFIX}_endpoints", "Endpoints by liveness (last heartbeat)", labels=["state"]
    )
    family.add_metric(["online"], online)
    family.add_metric(["offline"], offline)
    return family


class RequestMetrics:
    """ASGI middleware: counts each HTTP request once, by the route that matched it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router puts the matched route in the scope; unmatched paths share one label.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(route, scope["method"], status, time.perf_counter() - began)


router = APIRouter()


@router.get(METRICS_PATH, include_in_schema=False)
async def metrics(request: Request) -> Response:
    service_metrics: ServiceMetrics = request.app.state.metrics
    service_metrics.allow(request)
    return Response(generate_latest(service_metrics.registry), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI, token_file: str | None) -> None:
    """Mount ``/metrics`` and the request counter on `app` (called by `create_app`)."""
    token = read_token(token_file) if token_file else None
    service_metrics = ServiceMetrics(token)
    service_metrics.registry.register(ServiceCollector(app))
    app.state.metrics = service_metrics
    app.include_router(router)
    app.add_middleware(RequestMetrics, metrics=service_metrics)
    if token is None:
        log.info("%s served to loopback clients only (no metrics token file)", METRICS_PATH)
