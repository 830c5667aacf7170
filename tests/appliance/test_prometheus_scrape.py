"""compose.yaml's `metrics` profile: Prometheus (Debian's package in a locally built image,
appliance/prometheus) scrapes the web service's /metrics and the endpoint's metrics port, all
real containers on the host's loopback.

The stack runs on free ports (no SDK here), with the endpoint's `metrics_port` set through
ENDPOINT_CONFIG. A task goes in over the service's REST API, as the SDK sends it; then
Prometheus's own API must show both targets up and answer queries for the endpoint's and the
service's counters with the task counted.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from endpoint.protocol.serialize import pack_buffers, serialize
from tests.appliance.conftest import (
    COMPUTE_SCOPE,
    PREFIX,
    ROOT,
    Container,
    Images,
    broker_ports,
    free_port,
    sh,
    wait_for,
)
from tests.fault.harness import FUNCTIONS

PROMETHEUS_IMAGE = os.environ.get("PROMETHEUS_IMAGE") or "compute-endpoint-prometheus:latest"


@dataclass
class Stack:
    project: str
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 300) -> str:
        return sh(
            "docker-compose", "-f", str(ROOT / "compose.yaml"), "-p", self.project,
            "--profile", "metrics", *args, env=self.env, timeout=timeout, cwd=ROOT,
        )  # fmt: skip

    def container(self, service: str) -> Container:
        return Container(f"{self.project}_{service}_1")

    def prometheus(self, path: str, **query: str) -> Any:
        url = f"http://127.0.0.1:{self.env['PROMETHEUS_PORT']}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=10) as resp:
            doc = json.load(resp)
        assert doc["status"] == "success", doc
        return doc["data"]


@pytest.fixture(scope="module")
def prometheus_image(images: Images) -> str:
    """The image `make prometheus-image` builds (cached layers: seconds once built);
    PROMETHEUS_IMAGE names a prebuilt one instead."""
    if not os.environ.get("PROMETHEUS_IMAGE"):
        base = os.environ.get("BASE_IMAGE") or "debian:bookworm-slim"
        sh(
            "docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
            "-f", "appliance/prometheus/Dockerfile", "-t", PROMETHEUS_IMAGE, ".",
            env={**os.environ, "DOCKER_BUILDKIT": "0"}, cwd=ROOT, timeout=1200,
        )  # fmt: skip
    return PROMETHEUS_IMAGE


@pytest.fixture(scope="module")
def stack(images: Images, prometheus_image: str) -> Iterator[Stack]:
    metrics_port = free_port()
    env = {
        **os.environ,
        **broker_ports(),
        "WEBSERVICE_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
        "ENDPOINT_METRICS_PORT": str(metrics_port),
        "BROKER_IMAGE": images.broker,
        "COMPUTE_ENDPOINT_IMAGE": images.endpoint,
        "PROMETHEUS_IMAGE": prometheus_image,
        "HEALTH_INTERVAL": "2s",
        "ENDPOINT_CONFIG": (
            "{display_name: scraped, engine: {type: ThreadPoolEngine, max_workers: 2}, "
            f"heartbeat_period: 5, metrics_port: {metrics_port}}}"
        ),
    }
    s = Stack(f"{PREFIX.replace('-', '')}prom", env)
    try:
        s.compose("up", "-d")
        s.container("endpoint").wait_health("healthy", timeout=180)
        s.container("prometheus").wait_health("healthy", timeout=120)
        yield s
    finally:
        s.compose("down", "--volumes", "--timeout", "20")


def _api(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    """The service's REST API with a token of the endpoint's own client (its owner)."""
    base = env["GLOBUS_SDK_SERVICE_URL_AUTH"].rstrip("/")
    form = f"grant_type=client_credentials&scope={COMPUTE_SCOPE}"
    req = urllib.request.Request(f"{base}/v2/oauth2/token", data=form.encode())
    pair = f"{env['GLOBUS_COMPUTE_CLIENT_ID']}:{env['GLOBUS_COMPUTE_CLIENT_SECRET']}"
    req.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        token = json.load(resp)["access_token"]
    call = urllib.request.Request(
        f"{base}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(call, timeout=30) as resp:
        return json.load(resp)


def _submit_one(stack: Stack) -> None:
    env = stack.container("endpoint").client_env()
    code = pack_buffers([serialize(FUNCTIONS["work"])])
    fid = _api(
        env,
        "POST",
        "/v3/functions",
        {"function_name": "work", "function_code": code, "serialized": True},
    )["function_uuid"]
    payload = pack_buffers([serialize((7, 0)), serialize({})])
    body = {"tasks": {fid: [payload]}, "create_queue": True}
    _api(env, "POST", f"/v3/endpoints/{env['ENDPOINT_ID']}/submit", body)


def _value(stack: Stack, query: str) -> float | None:
    result = stack.prometheus("/api/v1/query", query=query)["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_endpoint_and_the_service(stack: Stack) -> None:
    def targets_up() -> dict[str, str] | None:
        active = stack.prometheus("/api/v1/targets")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in active}
        return health if health == {"compute-webservice": "up", "compute-endpoint": "up"} else None

    try:
        wait_for("both targets up", targets_up, timeout=90)
    except AssertionError as e:
        raise AssertionError(f"{e}: {stack.prometheus('/api/v1/targets')}") from None
    _submit_one(stack)

    def counted() -> bool:
        done = _value(stack, "sum(compute_endpoint_tasks_succeeded_total)")
        submitted = _value(stack, 'sum(compute_service_requests_total{method="POST"})')
        return bool(done and done >= 1 and submitted and submitted >= 1)

    started = time.monotonic()
    wait_for("the task counted by both", counted, timeout=120)
    print(f"\n[appliance] the task showed in Prometheus after {time.monotonic() - started:.1f}s")
    # Histograms count the task once.
    assert _value(stack, "sum(compute_endpoint_task_run_seconds_count)") == 1.0
    assert _value(stack, "max(compute_endpoint_amqp_session_up)") == 1.0


def test_prometheus_listens_on_loopback_only_as_its_own_user(stack: Stack) -> None:
    flags = stack.prometheus("/api/v1/status/flags")
    assert flags["web.listen-address"] == f"127.0.0.1:{stack.env['PROMETHEUS_PORT']}"
    config = stack.container("prometheus").inspect()["Config"]
    assert config["User"] == "prometheus"
