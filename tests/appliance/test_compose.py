"""compose.yaml with Debian's docker-compose 1.29: broker, web service and endpoint on the host's
loopback, used by the official SDK on the host, through a broker outage, a `docker stop` and a
`down` / `up`.

The broker is the CI image (appliance/broker, BROKER_IMAGE); every port but the web service's
(the SDK's fixed localhost:5000) is a free one. The tests share one compose project and run in
file order: each leaves the stack as the next expects it.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.appliance.conftest import (
    ADD_SNIPPET,
    COMPUTE_SCOPE,
    ENDPOINT_JSON,
    PREFIX,
    ROOT,
    Container,
    Images,
    broker_ports,
    docker,
    run_sdk,
    sdk_port,
    sh,
)

#: The endpoint's config: a short heartbeat so freshness and recovery show within a test.
ENDPOINT_CONFIG = (
    "{display_name: composed, engine: {type: ProcessPoolEngine, max_workers: 2}, "
    "heartbeat_period: 5}"
)


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    memo: dict[str, Any] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 300) -> str:
        return sh(
            "docker-compose", "-f", str(ROOT / "compose.yaml"), "-p", self.project, *args,
            env=self.env, timeout=timeout, cwd=ROOT,
        )  # fmt: skip

    def container(self, service: str) -> Container:
        return Container(f"{self.project}_{service}_1")

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "80")


@pytest.fixture(scope="module")
def stack(images: Images) -> Iterator[Stack]:
    env = {
        **os.environ,
        **broker_ports(),
        "WEBSERVICE_PORT": str(sdk_port()),
        "BROKER_IMAGE": images.broker,
        "COMPUTE_ENDPOINT_IMAGE": images.endpoint,
        "HEALTH_INTERVAL": "2s",
        "ENDPOINT_CONFIG": ENDPOINT_CONFIG,
    }
    s = Stack(f"{PREFIX.replace('-', '')}compose", env)
    started = time.monotonic()
    try:
        s.compose("up", "-d")
        s.container("endpoint").wait_health("healthy", timeout=180)
        print(f"\n[appliance] compose up: healthy after {time.monotonic() - started:.1f}s")
        yield s
    finally:
        s.compose("down", "--volumes", "--timeout", "20")


def sdk_env(stack: Stack) -> dict[str, str]:
    # The endpoint container knows its id, the shared client and the service URL.
    return stack.container("endpoint").client_env()


def service_get(env: dict[str, str], path: str) -> Any:
    """GET from the web service with a token of the endpoint's client (its owner)."""
    base = env["GLOBUS_SDK_SERVICE_URL_AUTH"].rstrip("/")
    form = f"grant_type=client_credentials&scope={COMPUTE_SCOPE}"
    req = urllib.request.Request(f"{base}/v2/oauth2/token", data=form.encode())
    pair = f"{env['GLOBUS_COMPUTE_CLIENT_ID']}:{env['GLOBUS_COMPUTE_CLIENT_SECRET']}"
    req.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        token = json.load(resp)["access_token"]
    get = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(get, timeout=10) as resp:
        return json.load(resp)


def test_compose_up_serves_the_official_sdk_on_the_host(stack: Stack, peer_python: Path) -> None:
    env = sdk_env(stack)
    out = run_sdk(peer_python, env, ADD_SNIPPET)
    assert out["result"]["sum"] == 42
    stack.memo.update(task_id=out["task_id"], endpoint_id=env["ENDPOINT_ID"])


def test_the_endpoint_is_unhealthy_without_its_broker_and_healthy_after(stack: Stack) -> None:
    endpoint = stack.container("endpoint")
    stack.compose("stop", "broker")
    try:
        endpoint.wait_health("unhealthy", timeout=60)
        verdict = docker("exec", endpoint.name, "compute-endpoint", "health", check=False)
        log = endpoint.inspect()["State"]["Health"]["Log"][-1]
        print(f"\n[appliance] without the broker: {log['Output'].strip()}")
        assert verdict == "" and "AMQP not connected" in log["Output"]
    finally:
        stack.compose("start", "broker")
    started = time.monotonic()
    # The endpoint reconnects with capped exponential backoff (at most ~45 s between tries).
    endpoint.wait_health("healthy", timeout=150)
    print(f"[appliance] healthy again {time.monotonic() - started:.1f}s after the broker")


def test_docker_stop_ends_the_endpoint_within_its_grace_with_a_final_heartbeat(
    stack: Stack,
) -> None:
    endpoint = stack.container("endpoint")
    env = sdk_env(stack)
    docker("stop", "--time", "10", endpoint.name)
    state = endpoint.inspect()["State"]
    # Exit 0, not 137: it ended by itself before the grace ran out and Docker's SIGKILL came.
    assert state["ExitCode"] == 0 and not state["OOMKilled"], endpoint.logs()
    # The service consumes heartbeats asynchronously; right after the broker came back (the
    # previous test) its consumer may still be in its reconnect backoff (at most ~15 s): a
    # deadline to stop waiting, not a figure.
    deadline = time.monotonic() + 30
    while True:
        status = service_get(env, f"/v2/endpoints/{env['ENDPOINT_ID']}/status")
        ok = status["status"] == "offline" and status["details"].get("active") is False
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ok, f"{status}\n{stack.logs()}"  # the final heartbeat arrived
    stack.compose("up", "-d")


def test_down_then_up_keeps_the_endpoint_identity_and_results(
    stack: Stack, peer_python: Path
) -> None:
    stack.compose("down", "--timeout", "20")
    stack.compose("up", "-d")
    endpoint = stack.container("endpoint")
    endpoint.wait_health("healthy", timeout=180)
    assert (
        json.loads(endpoint.exec("cat", ENDPOINT_JSON))["endpoint_id"] == stack.memo["endpoint_id"]
    )
    snippet = f"""
    import json
    from globus_compute_sdk import Client, Executor

    def mul(a, b):
        return a * b

    old = Client().get_result({stack.memo["task_id"]!r})
    with Executor(endpoint_id={stack.memo["endpoint_id"]!r}) as ex:
        new = ex.submit(mul, 6, 7).result(timeout=180)
    print(json.dumps({{"old": old, "new": new}}))
    """
    out = run_sdk(peer_python, sdk_env(stack), snippet)
    assert out["old"]["sum"] == 42 and out["new"] == 42
