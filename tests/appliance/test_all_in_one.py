"""The all-in-one image as a CI job runs it: RabbitMQ + web service + endpoint in one container,
here under an arbitrary UID (`docker run --user 12345`), driven by the official SDK on the host.

The tests share one container and run in file order; the last one stops it.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.appliance.conftest import (
    ADD_SNIPPET,
    COMPUTE_SCOPE,
    ENDPOINT_JSON,
    PREFIX,
    Container,
    Images,
    broker_ports,
    docker,
    run_container,
    run_sdk,
    sdk_port,
)

UID = "12345"


@pytest.fixture(scope="module")
def aio(images: Images) -> Iterator[Container]:
    port = sdk_port()
    started = time.monotonic()
    box = run_container(
        images.all_in_one,
        name=f"{PREFIX}-aio",
        # The all-in-one needs a 20 s grace (README): RabbitMQ with its management plugin
        # takes 6-8 s to stop, more than Docker's default 10 s leaves after the others.
        env={"WEBSERVICE_PORT": str(port), "STOP_GRACE_SECS": "20", **broker_ports()},
        options=("--user", UID, "--health-interval", "2s", "--stop-timeout", "20"),
    )
    box.wait_health("healthy", timeout=180)
    print(f"\n[appliance] all-in-one healthy after {time.monotonic() - started:.1f}s")
    yield box
    docker("rm", "--force", "--volumes", box.name, check=False)


def test_official_sdk_on_the_host_runs_a_function_in_it(aio: Container, peer_python: Path) -> None:
    env = aio.client_env()
    assert env["GLOBUS_SDK_ENVIRONMENT"] == "local" and env["ENDPOINT_ID"]
    assert json.loads(aio.exec("cat", ENDPOINT_JSON))["endpoint_id"] == env["ENDPOINT_ID"]
    out = run_sdk(peer_python, env, ADD_SNIPPET)
    # The task ran in a worker of the endpoint, as the container's arbitrary UID.
    assert out["result"] == {"sum": 42, "uid": int(UID)}


def test_create_client_prints_credentials_the_service_accepts(aio: Container) -> None:
    creds = json.loads(aio.exec("compute-webservice", "create-client"))
    basic = base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode()).decode()
    url = aio.client_env()["GLOBUS_SDK_SERVICE_URL_AUTH"] + "v2/oauth2/token"
    req = urllib.request.Request(
        url,
        data=f"grant_type=client_credentials&scope={COMPUTE_SCOPE}".encode(),
        headers={"Authorization": f"Basic {basic}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.load(resp)["access_token"]


def test_tini_supervises_every_program_under_the_arbitrary_uid(aio: Container) -> None:
    assert aio.exec("cat", "/proc/1/cmdline").split("\0")[0] == "tini"
    assert aio.exec("id", "-u").strip() == UID
    status = aio.exec("supervisorctl", "status")
    for program in ("broker", "webservice", "endpoint", "watchdog"):
        assert f"{program} " in status and "RUNNING" in status.split(program, 1)[1].split("\n")[0]
    health = json.loads(aio.exec("compute-endpoint", "status", "--format", "json"))
    assert health["healthy"] and health["amqp_connected"] and health["state"] == "running"


def test_docker_stop_stops_the_programs_in_order_within_the_grace_period(aio: Container) -> None:
    docker("stop", aio.name)  # the container's grace (--stop-timeout 20), then SIGKILL
    state = aio.inspect()["State"]
    logs = aio.logs(tail=400)
    # Exit 0, not 137: it ended by itself before the grace ran out and Docker's SIGKILL came.
    assert state["ExitCode"] == 0 and not state["OOMKilled"], logs
    # Endpoint first (its last heartbeat still reaches the service), broker last.
    order = [logs.index(f"stopped: {p} (exit status 0)") for p in ("endpoint", "webservice")]
    assert order == sorted(order) and "stopped: broker" in logs, logs
    assert "endpoint.runtime.adapter: endpoint" in logs and "SIGKILL" not in logs
