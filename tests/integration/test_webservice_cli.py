"""`compute-webservice`: create-client, and `serve` alone (embedded broker) as a whole stack."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devstack.testing import fetch_token
from webservice.broker import free_port

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "webservice"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("COMPUTE_WEBSERVICE_")}


def test_create_client_prints_credentials_as_json(tmp_path: Path) -> None:
    db = str(tmp_path / "ws.db")
    out = subprocess.run(
        [*CLI, "create-client", "--db", db], capture_output=True, text=True, check=True, env=_env()
    )
    doc = json.loads(out.stdout)
    assert set(doc) == {"client_id", "client_secret"}
    assert doc["client_secret"] not in (tmp_path / "ws.db").read_bytes().decode("latin-1")


def _wait_up(url: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "compute-webservice serve exited early"
        try:
            if httpx.get(f"{url}/v2/version").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("compute-webservice serve did not come up")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.timeout(240)
def test_serve_without_a_broker_url_runs_an_embedded_rabbitmq(tmp_path: Path) -> None:
    db = str(tmp_path / "state" / "ws.db")
    client = json.loads(
        subprocess.run(
            [*CLI, "create-client", "--db", db],
            capture_output=True,
            text=True,
            check=True,
            env=_env(),
        ).stdout
    )
    port = free_port()
    env = {**_env(), "COMPUTE_WEBSERVICE_PORT": str(port), "COMPUTE_WEBSERVICE_DB": db}
    proc = subprocess.Popen(
        [*CLI, "serve", "--host", "127.0.0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc)
        token = fetch_token(url, client["client_id"], client["client_secret"])
        reg = httpx.post(
            f"{url}/v3/endpoints",
            json={"endpoint_name": "e"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        amqp_port = int((tmp_path / "state" / "rabbitmq" / "amqp_port").read_text())
        assert f"127.0.0.1:{amqp_port}/" in reg["command_queue_info"]["connection_url"]
        assert _port_open(amqp_port)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, output[-3000:]
    assert "embedded RabbitMQ" in output
    assert not _port_open(amqp_port)
