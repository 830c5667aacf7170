"""Prometheus metrics of a user endpoint, served on the opt-in ``metrics_port``.

Two kinds of figures, so that the task path pays almost nothing:

* what the runtime already keeps (queue sizes, counters of the interchange, the engine's
  workers and blocks, container pools, AMQP sessions, the last heartbeat) is read at scrape
  time by `StatusCollector`, from the same snapshot the runtime writes to ``status.json``;
* what only the task path knows (failure reasons, how long a task waited, ran and took to be
  confirmed) is recorded by `EndpointMetrics.on_plan`: one call per batch of events, from the
  runtime's loop thread only.

Every label set is bounded: session names, block states, failure reasons from a fixed list
(anything else is ``other``). Task ids, function ids and users are never labels.

``metrics_port: 0`` binds a free port; the address and port actually bound are written to
``status.json`` (key ``metrics``) either way. Without ``metrics_port`` the runtime gets
`NO_METRICS` and nothing listens.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from endpoint.errors import EndpointError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from endpoint.runtime.interchange import Plan

log = logging.getLogger(__name__)

PREFIX = "compute_endpoint"

#: Failure reasons (``error_details.code`` of a Result) that get a label value of their own.
REASONS = frozenset(
    {
        "RemoteExecutionError",
        "DeserializationError",
        "TaskTimeout",
        "MaxResultSizeExceeded",
        "CouldNotExecuteUserTaskError",
        "WorkerLost",
        "EngineFailure",
        "ResourceSpecificationNotSupported",
        "EndpointInterrupted",
        "UNKNOWN_TASK_FAILURE",
        "FUNCTION_NOT_ALLOWED",
        "InvalidTaskHeaders",
        "TaskTooLarge",
        "ContainerImageNotFound",
        "WorkerVersionMismatch",
        "ContainerStartFailed",
        "ContainerImageNotAllowed",
        "MPISpecError",
    }
)
OTHER_REASON = "other"

#: Seconds; from a millisecond (a thread pool) to a day (a batch queue).
TIME_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)

_ERROR_KEY = b'"error_details":'
#: Only the end of a packed Result is searched: the fields after ``data`` are small.
_TAIL = 64 * 1024


class MetricsError(EndpointError):
    """The metrics port could not be opened."""


def failure_reason(packed: bytes) -> str | None:
    """The bounded failure reason of a packed Result, or None when it succeeded.

    `pack` writes ``error_details`` after ``data`` and JSON escapes every quote inside
    ``data``, so the last unescaped ``"error_details":`` is the field itself; only the tail
    of a (possibly large) result is searched, and nothing is parsed."""
    at = packed.rfind(_ERROR_KEY, max(0, len(packed) - _TAIL))
    if at < 0:
        return None
    rest = packed[at + len(_ERROR_KEY) : at + len(_ERROR_KEY) + 200]
    if rest.startswith(b"null"):
        return None
    code_at = rest.find(b'"code":"')
    if code_at < 0:
        return OTHER_REASON
    start = code_at + len(b'"code":"')
    code = rest[start : rest.find(b'"', start)].decode("utf-8", "replace")
    return code if code in REASONS else OTHER_REASON


class RuntimeView(Protocol):
    """What the collector reads of the runtime (`endpoint.runtime.adapter.EndpointRuntime`)."""

    last_status: dict[str, Any]

    @property
    def ix(self) -> Any: ...


class StatusCollector(Collector):
    """Gauges and the runtime's own counters, read when Prometheus scrapes."""

    def __init__(self, runtime: RuntimeView, credentials_at: list[float]) -> None:
        self.runtime = runtime
        self.credentials_at = credentials_at

    def collect(self) -> Iterator[Metric]:
        doc = dict(self.runtime.last_status)
        ix = self.runtime.ix
        # Read live: lengths and a copy of a dict whose keys never change (thread-safe enough
        # for a gauge); the rest comes from the last status.json snapshot.
        counts = ix.status()
        yield from _task_metrics(counts, len(ix.tasks))
        yield from _amqp_metrics(doc)
        yield from _engine_metrics(doc.get("engine") or {})
        yield from _breaker_metrics(doc.get("engine_breaker"))
        yield _gauge(
            "credentials_age_seconds",
            "Seconds since the endpoint was handed its current broker credentials",
            time.time() - self.credentials_at[0],
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _task_metrics(counts: dict[str, Any], journaled: int) -> Iterable[Metric]:
    yield _counter("tasks_received", "Tasks received (each once)", counts.get("received", 0))
    yield _counter(
        "tasks_completed",
        "Tasks whose result the broker confirmed (succeeded or failed)",
        counts.get("completed", 0),
    )
    yield _counter(
        "deliveries_rejected",
        "Deliveries dead-lettered (no or bad task id)",
        counts.get("rejected", 0),
    )
    yield _counter(
        "deliveries_duplicate", "Redeliveries of known tasks", counts.get("duplicates", 0)
    )
    yield _gauge("tasks_queued", "Tasks waiting for the engine", counts.get("queued_tasks", 0))
    yield _gauge("tasks_running", "Tasks handed to the engine", counts.get("running_tasks", 0))
    yield _gauge(
        "results_unconfirmed",
        "Results not yet confirmed by the broker",
        counts.get("unconfirmed_results", 0),
    )
    yield _gauge("journal_depth", "Tasks in the journal (not yet confirmed)", journaled)


def _amqp_metrics(doc: dict[str, Any]) -> Iterable[Metric]:
    sessions = GaugeMetricFamily(
        f"{PREFIX}_amqp_session_up", "1 while an AMQP session is connected", labels=["session"]
    )
    for name, up in sorted((doc.get("amqp_sessions") or {}).items()):
        sessions.add_metric([str(name)], 1.0 if up else 0.0)
    yield sessions
    yield _gauge(
        "amqp_consuming",
        "1 while the task queue is consumed",
        1.0 if doc.get("amqp_consuming", True) else 0.0,
    )
    last = doc.get("last_heartbeat_unix")
    if isinstance(last, int | float):
        yield _gauge(
            "last_heartbeat_age_seconds",
            "Seconds since the last heartbeat was sent",
            max(0.0, time.time() - last),
        )


def _engine_metrics(engine: dict[str, Any]) -> Iterable[Metric]:
    total = int(engine.get("total_workers") or 0)
    idle = int(engine.get("idle_workers") or 0)
    workers = GaugeMetricFamily(
        f"{PREFIX}_engine_workers", "Engine workers by state", labels=["state"]
    )
    workers.add_metric(["idle"], idle)
    workers.add_metric(["busy"], max(0, total - idle))
    yield workers
    blocks = engine.get("blocks")
    if isinstance(blocks, dict):
        family = GaugeMetricFamily(
            f"{PREFIX}_blocks", "Batch blocks by Parsl job state", labels=["state"]
        )
        for state, count in sorted(blocks.items()):
            family.add_metric([str(state).lower()[:32]], float(count))
        yield family
        failed = sum(int(n) for s, n in blocks.items() if str(s) in ("FAILED", "MISSING"))
        yield _gauge("blocks_failed", "Blocks known to have failed (FAILED or MISSING)", failed)
    containers = engine.get("containers")
    if isinstance(containers, dict):
        yield from _container_metrics(containers)


def _container_metrics(c: dict[str, Any]) -> Iterable[Metric]:
    yield _gauge("container_pools_warm", "Container worker pools ready", c.get("warm_pools", 0))
    yield _gauge(
        "container_pools_starting", "Container worker pools starting", c.get("starting_pools", 0)
    )
    yield _counter("container_warm_hits", "Tasks served by a warm pool", c.get("warm_hits", 0))
    yield _counter("container_cold_starts", "Container pools cold-started", c.get("cold_starts", 0))
    yield _counter(
        "container_cold_start_seconds",
        "Seconds spent cold-starting container pools, in all",
        c.get("cold_start_seconds", 0.0),
    )
    yield _counter(
        "container_evictions", "Warm pools evicted for another image", c.get("evictions", 0)
    )
    yield _counter(
        "container_failed_starts", "Container pools that failed to start", c.get("failed_starts", 0)
    )


def _breaker_metrics(breaker: Any) -> Iterable[Metric]:
    is_open = isinstance(breaker, dict) and breaker.get("state") == "open"
    family = GaugeMetricFamily(
        f"{PREFIX}_breaker_open",
        "1 while the engine or block breaker is open (no new engine or batch jobs)",
        labels=["kind"],
    )
    kind = breaker.get("kind") if is_open and isinstance(breaker, dict) else None
    for name in ("engine", "blocks"):
        family.add_metric([name], 1.0 if kind == name else 0.0)
    yield family
    trips = int(breaker.get("trips") or 0) if is_open and isinstance(breaker, dict) else 0
    yield _gauge("breaker_trips", "Block breaker trips in a row (0 when closed)", trips)


class NoMetrics:
    """What the runtime calls when ``metrics_port`` is not set: nothing at all."""

    def start(self, runtime: RuntimeView) -> None:
        pass

    def where(self) -> dict[str, Any] | None:
        return None

    def on_plan(self, plan: Plan) -> None:
        pass

    def session_changed(self, name: str, up: bool) -> None:
        pass

    def credentials_refreshed(self) -> None:
        pass

    def stop(self) -> None:
        pass


NO_METRICS = NoMetrics()


class EndpointMetrics(NoMetrics):
    """A private registry and its HTTP server, plus the task path's timings."""

    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.failed = Counter(
            f"{PREFIX}_tasks_failed",
            "Tasks whose result is an error, by reason",
            ["reason"],
            registry=r,
        )
        self.succeeded = Counter(
            f"{PREFIX}_tasks_succeeded", "Tasks whose result is a success", registry=r
        )
        self.queue_wait = _histogram("task_queue_wait_seconds", "Receipt to engine submit", r)
        self.run_time = _histogram("task_run_seconds", "Engine submit to result", r)
        self.publish = _histogram(
            "result_publish_seconds", "Result to the broker's confirm of its publish", r
        )
        self.reconnects = Counter(
            f"{PREFIX}_amqp_reconnects", "AMQP session reconnects", ["session"], registry=r
        )
        self._failed = {reason: self.failed.labels(reason) for reason in REASONS}
        self._failed[OTHER_REASON] = self.failed.labels(OTHER_REASON)
        # Task id -> monotonic time of its last stage; touched by the loop thread only.
        self._queued: dict[str, float] = {}
        self._running: dict[str, float] = {}
        self._publishing: dict[str, float] = {}
        self._seen_up: set[str] = set()
        self._credentials_at = [time.time()]
        self._server: WSGIServer | None = None

    def start(self, runtime: RuntimeView) -> None:
        self.registry.register(StatusCollector(runtime, self._credentials_at))
        self._server = serve(self.registry, self.address, self.port)

    def where(self) -> dict[str, Any] | None:
        return where(self._server, self.address)

    def stop(self) -> None:
        close(self._server)
        self._server = None

    def credentials_refreshed(self) -> None:
        self._credentials_at[0] = time.time()

    def session_changed(self, name: str, up: bool) -> None:
        if not up:
            return
        if name in self._seen_up:
            self.reconnects.labels(name).inc()
        self._seen_up.add(name)

    def on_plan(self, plan: Plan) -> None:
        """Stage times of one batch: receipt, engine submit, result, confirm (forget)."""
        now = time.monotonic()
        for task in plan.add_tasks:
            self._queued[task.task_id] = now
        for sub in plan.submit:
            since = self._queued.pop(sub.task_id, None)
            if since is not None:
                self.queue_wait.observe(now - since)
            self._running[sub.task_id] = now
        for task_id, packed in plan.results:
            self._queued.pop(task_id, None)  # refused before it ran: no wait, no run time
            since = self._running.pop(task_id, None)
            if since is not None:
                self.run_time.observe(now - since)
            self._publishing[task_id] = now
            reason = failure_reason(packed)
            if reason is None:
                self.succeeded.inc()
            else:
                self._failed[reason].inc()
        for task_id in plan.forget:
            since = self._publishing.pop(task_id, None)
            if since is not None:
                self.publish.observe(now - since)


def serve(registry: CollectorRegistry, address: str, port: int) -> WSGIServer:
    """Serve `registry` at ``http://address:port/metrics`` from a daemon thread."""
    try:
        server, _thread = start_http_server(port, address, registry=registry)
    except OSError as e:
        raise MetricsError(f"cannot serve metrics on {address}:{port}: {e.strerror or e}") from e
    log.info("metrics served on http://%s:%s/metrics", address, server.server_port)
    if not _is_loopback(address):
        log.warning(
            "metrics_address %s is not loopback: anyone who can reach it reads the metrics"
            " (no authentication; keep it behind a firewall)",
            address,
        )
    return server


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def where(server: WSGIServer | None, address: str) -> dict[str, Any] | None:
    """What status.json says about the metrics port: the address and the port bound."""
    return None if server is None else {"address": address, "port": int(server.server_port)}


def close(server: WSGIServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


def _histogram(name: str, doc: str, registry: CollectorRegistry) -> Histogram:
    return Histogram(f"{PREFIX}_{name}", doc, buckets=TIME_BUCKETS, registry=registry)


def metrics_for(address: str, port: int | None) -> NoMetrics:
    """The runtime's metrics: `NO_METRICS` unless a port is configured."""
    return NO_METRICS if port is None else EndpointMetrics(address, port)
