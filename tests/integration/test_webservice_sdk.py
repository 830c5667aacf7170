"""The official, unmodified SDK (4.19, peer venv) against the web service.

The SDK's `local` environment is fixed at http://localhost:5000, so this is the one
web-service test that serves on port 5000. When 5000 is taken (the e2e suite's session stack
holds it for the whole run), the service gets a free port and the driver script points the
SDK's URL lookup there instead. A fake endpoint (pika, in a thread, with the broker account and
queue names its registration handed out) answers each task with the JSON-serialized value 42;
the SDK reads its results with the account the service hands it, which may read nothing but
its own result queues.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest

from devstack.testing import ApiClient, ServiceThread, fetch_token, service_settings
from endpoint.protocol.messages import Result, Task, pack, unpack_as
from webservice.broker import PrivateRabbit, free_port
from webservice.server import port_is_free
from webservice.settings import DEFAULT_QUEUE_PREFIX

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SDK_PORT = 5000

# Only when the service is not on the SDK's fixed local port: redirect the SDK's URL lookup.
URL_PATCH = """
import globus_compute_sdk.sdk.client as _client
_client.get_web_service_url = lambda *_a, **_k: {url!r}
"""

SDK_SCRIPT = """
import json, sys
from globus_compute_sdk import Client, Executor

def double(x):
    return 2 * x

client = Client()
fid = client.register_function(double)
with Executor(endpoint_id=sys.argv[1], client=client) as ex:
    fut = ex.submit_to_registered_function(fid, args=(21,))
    value = fut.result(timeout=60)
task = client.get_task(fut.task_id)
print(json.dumps({"fid": fid, "task_id": fut.task_id, "value": value,
                  "rest": {"pending": task["pending"], "result": task.get("result")}}))
"""


@pytest.fixture
def sdk_service(rabbit: PrivateRabbit, tmp_path: Path) -> Iterator[ServiceThread]:
    port = SDK_PORT if port_is_free(SDK_PORT) else free_port()
    # The service's default task-group queue prefix, as the SDK meets it.
    settings = service_settings(rabbit, tmp_path / "ws.db", queue_prefix=DEFAULT_QUEUE_PREFIX)
    with ServiceThread(settings, host="localhost", port=port) as svc:
        yield svc


def _fake_endpoint(reg: dict[str, Any], stop: threading.Event, seen: list[Task]) -> None:
    """Plays the endpoint with exactly what its registration handed out: its own broker
    account, its own tasks queue, and its own results routing key."""
    tasks = reg["task_queue_info"]
    publish = reg["result_queue_info"]["queue_publish_kwargs"]
    conn = pika.BlockingConnection(pika.URLParameters(tasks["connection_url"]))
    ch = conn.channel()
    ch.confirm_delivery()
    while not stop.is_set():
        method, props, body = ch.basic_get(tasks["queue"], auto_ack=True)
        if method is None:
            conn.sleep(0.05)
            continue
        seen.append(unpack_as(body, Task))
        result = Result(task_id=props.headers["task_uuid"], data="11\n42")
        ch.basic_publish(
            publish["exchange"],
            publish["routing_key"],
            pack(result),
            pika.BasicProperties(**publish["properties"]),
            mandatory=publish["mandatory"],
        )
    conn.close()


def test_official_sdk_registers_submits_and_gets_results(
    sdk_service: ServiceThread, tmp_path: Path, peer_python: Path
) -> None:
    cid, secret = sdk_service.create_client("sdk-user")
    api = ApiClient(sdk_service.url, cid, fetch_token(sdk_service.url, cid, secret))
    reg = api.register_endpoint()
    ep = reg["endpoint_id"]
    # The endpoint's own account, never the service's (an administrator).
    assert urlsplit(reg["task_queue_info"]["connection_url"]).username == f"ep.{ep}"
    stop, seen = threading.Event(), list[Task]()
    fake = threading.Thread(target=_fake_endpoint, args=(reg, stop, seen))
    fake.start()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "GLOBUS_SDK_ENVIRONMENT": "local",
        "GLOBUS_SDK_SERVICE_URL_AUTH": f"{sdk_service.url}/",
        "GLOBUS_COMPUTE_CLIENT_ID": cid,
        "GLOBUS_COMPUTE_CLIENT_SECRET": secret,
        "GLOBUS_COMPUTE_USER_DIR": str(tmp_path / "gc"),
    }
    script = SDK_SCRIPT
    if sdk_service.port != SDK_PORT:
        script = URL_PATCH.format(url=sdk_service.url) + script
    try:
        proc = subprocess.run(
            [str(peer_python), "-c", script, ep],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        stop.set()
        fake.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["value"] == 42
    assert out["rest"] == {"pending": False, "result": 42}
    uuid.UUID(out["fid"])
    assert [t.task_id for t in seen] == [out["task_id"]]
    # The task buffer is the registered code followed by the payload the SDK sent.
    code = api.get(f"/v2/functions/{out['fid']}").json()["function_code"]
    assert code.split("\n", 2)[1] == "01"
    assert seen[0].task_buffer.startswith(code)
    assert len(seen[0].task_buffer) > len(code)
    api.close()
