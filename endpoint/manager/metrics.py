"""Prometheus metrics of a manager (core) endpoint, on the opt-in ``metrics_port``.

User endpoints by state are read from the manager's table when Prometheus scrapes; spawn
times and start failures are recorded where they happen (`endpoint.manager.core`). Labels
are bounded: never a user, an identity or an endpoint id.

A manager writes no heartbeat file of its own, so with metrics on it writes ``status.json``
with its pid and the ``metrics`` address and port bound (``metrics_port: 0`` binds a free
one); without ``metrics_port`` it gets `NO_MANAGER_METRICS`, nothing listens and no file is
written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from endpoint.host.status import write_status
from endpoint.runtime.metrics import PREFIX, TIME_BUCKETS, close, serve, where

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

#: Why a user endpoint did not start: refused by the manager (identity mapping, template,
#: limit, spawn error) or its process ended before it said it was ready.
START_FAILURES = ("refused", "exited")


class ManagerView(Protocol):
    """What the collector reads of `endpoint.manager.core.Manager`."""

    @property
    def ueps(self) -> dict[str, Any]: ...


class UserEndpointCollector(Collector):
    def __init__(self, manager: ManagerView) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        # A copy first: the manager's loop thread adds and removes entries meanwhile.
        ueps = list(self.manager.ueps.values())
        stopping = sum(1 for u in ueps if u.stopping)
        family = GaugeMetricFamily(
            f"{PREFIX}_user_endpoints", "User endpoint processes by state", labels=["state"]
        )
        family.add_metric(["running"], len(ueps) - stopping)
        family.add_metric(["stopping"], stopping)
        yield family


class NoManagerMetrics:
    """What the manager calls when ``metrics_port`` is not set: nothing at all."""

    def start(self, manager: ManagerView, ep_dir: Path, endpoint_id: str) -> None:
        pass

    def spawned(self, seconds: float) -> None:
        pass

    def start_failed(self, why: str) -> None:
        pass

    def stop(self) -> None:
        pass


NO_MANAGER_METRICS = NoManagerMetrics()


class ManagerMetrics(NoManagerMetrics):
    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port
        self.registry = CollectorRegistry()
        self.spawn_seconds = Histogram(
            f"{PREFIX}_user_endpoint_spawn_seconds",
            "Time to start a user endpoint process and hand it its launch document",
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        failures = Counter(
            f"{PREFIX}_user_endpoint_start_failures",
            "User endpoints that did not start, by why",
            ["reason"],
            registry=self.registry,
        )
        self.failures = {why: failures.labels(why) for why in START_FAILURES}
        self._server: WSGIServer | None = None

    def start(self, manager: ManagerView, ep_dir: Path, endpoint_id: str) -> None:
        self.registry.register(UserEndpointCollector(manager))
        self._server = serve(self.registry, self.address, self.port)
        doc = {
            "pid": os.getpid(),
            "endpoint_id": endpoint_id,
            "kind": "manager",
            "metrics": where(self._server, self.address),
        }
        write_status(ep_dir, doc)

    def spawned(self, seconds: float) -> None:
        self.spawn_seconds.observe(seconds)

    def start_failed(self, why: str) -> None:
        self.failures[why].inc()

    def stop(self) -> None:
        close(self._server)
        self._server = None


def manager_metrics_for(address: str, port: int | None) -> NoManagerMetrics:
    return NO_MANAGER_METRICS if port is None else ManagerMetrics(address, port)
