"""The web service against a real broker: tasks out, commands out, results and heartbeats in."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from devstack.testing import ApiClient, ServiceThread
from endpoint.protocol.messages import EPStatusReport, Result, Task, pack, unpack_as
from webservice.broker import PrivateRabbit
from webservice.settings import Settings

pytestmark = pytest.mark.integration

CODE = "12\n01\ngASVAA==\n"
PAYLOAD = "28\n00\ngASVBQAAAAAAAABLKIWULg==\n12\n00\ngAR9lC4=\n"
RUNTIME = {"python_version": "3.11.7", "globus_compute_sdk_version": "4.19.0"}

Message = tuple[pika.spec.Basic.GetOk, pika.BasicProperties, bytes]


@pytest.fixture(scope="module")
def service(
    rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceThread]:
    db = tmp_path_factory.mktemp("ws-flow") / "ws.db"
    settings = Settings(
        amqp_url=rabbit.url,
        db_path=str(db),
        queue_prefix=f"tg.{uuid.uuid4().hex[:8]}.",
        default_heartbeat_period_s=30,
        # Revive at once, so the revival test need not wait out the grace period.
        uep_restart_grace_s=0,
    )
    with ServiceThread(settings) as svc:
        yield svc


@pytest.fixture
def api(service: ServiceThread) -> Iterator[ApiClient]:
    with service.new_identity("alice") as client:
        yield client


@pytest.fixture
def channel(rabbit: PrivateRabbit) -> Iterator[BlockingChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        yield conn.channel()
    finally:
        conn.close()


def get_one(ch: BlockingChannel, queue: str, timeout: float = 10) -> Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return method, props, body
        time.sleep(0.02)
    raise AssertionError(f"no message on {queue} within {timeout}s")


def queue_depth(ch: BlockingChannel, queue: str) -> int:
    return int(ch.queue_declare(queue, passive=True).method.message_count)


def publish_result(ch: BlockingChannel, route_id: str, body: bytes) -> None:
    ch.basic_publish("results", f"{route_id}.results", body, pika.BasicProperties(delivery_mode=2))


def publish_heartbeat(ch: BlockingChannel, endpoint_id: str, state: dict[str, Any]) -> None:
    body = pack(EPStatusReport(endpoint_id=endpoint_id, global_state=state))
    ch.basic_publish("heartbeats", f"{endpoint_id}.heartbeats", body)


def success(task_id: str, endpoint_id: str, data: str = "11\n42") -> bytes:
    return pack(Result(task_id=task_id, data=data, details={"endpoint_id": endpoint_id}))


def wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def submit_one(api: ApiClient, endpoint_id: str, **extra: Any) -> tuple[str, str, str]:
    """(function id, task id, task group id) of a one-task submit."""
    fid = api.register_function(CODE)
    resp = api.submit(endpoint_id, {fid: [PAYLOAD]}, **extra)
    assert resp.status_code == 200, resp.text
    reply = resp.json()
    return fid, reply["tasks"][fid][0], reply["task_group_id"]


# --- tasks out --------------------------------------------------------------------------------


def test_submit_to_a_single_user_endpoint_publishes_tasks_to_its_queue(
    service: ServiceThread, api: ApiClient, channel: BlockingChannel
) -> None:
    ep = api.register_endpoint()["endpoint_id"]
    f1, f2 = api.register_function(CODE), api.register_function("9\n01\nabcdef")
    resp = api.submit(
        ep,
        {f1: [PAYLOAD, PAYLOAD + "x"], f2: [PAYLOAD]},
        resource_specification={"num_nodes": 1},
        result_serializers=["globus_compute_sdk.serialize.concretes.JSONData"],
        user_runtime=RUNTIME,
    )
    assert resp.status_code == 200, resp.text
    reply = resp.json()
    assert set(reply) == {"request_id", "task_group_id", "endpoint_id", "tasks"}
    assert reply["endpoint_id"] == ep
    uuid.UUID(reply["request_id"])
    assert [len(reply["tasks"][f1]), len(reply["tasks"][f2])] == [2, 1]
    # The task-group queue exists before the reply (the SDK consumes it without declaring).
    assert queue_depth(channel, f"{service.settings.queue_prefix}{reply['task_group_id']}") == 0

    expected = [(f1, reply["tasks"][f1][0], CODE + PAYLOAD)]
    expected += [(f1, reply["tasks"][f1][1], CODE + PAYLOAD + "x")]
    expected += [(f2, reply["tasks"][f2][0], "9\n01\nabcdef" + PAYLOAD)]
    for fid, tid, buffer in expected:
        method, props, body = get_one(channel, f"{ep}.tasks")
        assert method.exchange == "tasks"
        assert method.routing_key == f"{ep}.tasks"
        assert props.delivery_mode == 2
        assert props.content_type == "application/json"
        assert props.headers == {
            "function_uuid": fid,
            "task_uuid": tid,
            "resource_specification": json.dumps({"num_nodes": 1}),
            "result_serializers": ["globus_compute_sdk.serialize.concretes.JSONData"],
        }
        task = unpack_as(body, Task)
        assert (task.task_id, task.task_buffer) == (tid, buffer)
        assert body == pack(Task(task_id=tid, task_buffer=buffer))


def test_absent_resource_specification_is_the_string_null(
    api: ApiClient, channel: BlockingChannel
) -> None:
    ep = api.register_endpoint()["endpoint_id"]
    submit_one(api, ep)
    _, props, _ = get_one(channel, f"{ep}.tasks")
    assert props.headers["resource_specification"] == "null"
    assert props.headers["result_serializers"] == []


def test_submit_to_a_manager_starts_a_user_endpoint_then_queues_its_tasks(
    service: ServiceThread, api: ApiClient, channel: BlockingChannel
) -> None:
    mgr = str(uuid.uuid4())
    assert api.put(f"/v3/endpoints/{mgr}", json={"endpoint_name": "m"}).status_code == 200
    config = {"worker_init": "true"}
    before = int(time.time())
    fid, tid, _ = submit_one(api, mgr, user_endpoint_config=config, user_runtime=RUNTIME)

    method, props, body = get_one(channel, f"{mgr}.commands")
    assert method.exchange == ""
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert isinstance(props.timestamp, int)
    assert before <= props.timestamp <= time.time() + 1
    cmd = json.loads(body)
    uep = cmd["kwargs"]["amqp_creds"]["endpoint_id"]
    assert uep != mgr
    url = service.settings.amqp_url
    assert cmd == {
        "command": "cmd_start_endpoint",
        "args": [],
        "kwargs": {
            "name": f"uep.{mgr[:8]}.{uep[:8]}",
            "amqp_creds": {
                "endpoint_id": uep,
                "task_queue_info": {
                    "connection_url": url,
                    "exchange": "tasks",
                    "queue": f"{uep}.tasks",
                },
                "result_queue_info": {
                    "connection_url": url,
                    "exchange": "results",
                    "queue": "results",
                    "queue_publish_kwargs": {
                        "exchange": "results",
                        "routing_key": f"{uep}.results",
                        "mandatory": True,
                        "properties": {"delivery_mode": 2},
                    },
                },
                "heartbeat_queue_info": {
                    "connection_url": url,
                    "exchange": "heartbeats",
                    "queue": "heartbeats",
                    "queue_publish_kwargs": {
                        "exchange": "heartbeats",
                        "routing_key": f"{uep}.heartbeats",
                        "mandatory": True,
                        "properties": {"delivery_mode": 2},
                    },
                },
            },
            "user_opts": config,
            "user_runtime": RUNTIME,
        },
        "globus_effective_identity": api.identity,
        "globus_identity_set": [{"sub": api.identity}],
        "globus_username": f"{api.identity}@clients.auth.globus.org",
    }
    _, tprops, tbody = get_one(channel, f"{uep}.tasks")
    assert tprops.headers["task_uuid"] == tid
    assert tprops.headers["function_uuid"] == fid
    assert unpack_as(tbody, Task).task_buffer == CODE + PAYLOAD

    # Same caller and config: same UEP, and the command is sent again; new config: a new UEP.
    submit_one(api, mgr, user_endpoint_config=dict(reversed(config.items())))
    again = json.loads(get_one(channel, f"{mgr}.commands")[2])
    assert again["kwargs"]["amqp_creds"]["endpoint_id"] == uep
    submit_one(api, mgr, user_endpoint_config={"worker_init": "false"})
    other = json.loads(get_one(channel, f"{mgr}.commands")[2])
    assert other["kwargs"]["amqp_creds"]["endpoint_id"] != uep
    assert other["kwargs"]["user_opts"] == {"worker_init": "false"}


def test_submit_without_config_sends_empty_user_opts(
    api: ApiClient, channel: BlockingChannel
) -> None:
    mgr = str(uuid.uuid4())
    api.put(f"/v3/endpoints/{mgr}", json={"endpoint_name": "m"})
    submit_one(api, mgr)
    cmd = json.loads(get_one(channel, f"{mgr}.commands")[2])
    assert cmd["kwargs"]["user_opts"] == {}


# --- results in -------------------------------------------------------------------------------


def test_a_result_is_stored_and_forwarded_byte_for_byte(
    service: ServiceThread, api: ApiClient, channel: BlockingChannel
) -> None:
    ep = api.register_endpoint()["endpoint_id"]
    _, tid, tg = submit_one(api, ep)
    body = success(tid, ep)
    before = int(time.time())
    publish_result(channel, ep, body)

    method, props, forwarded = get_one(channel, f"{service.settings.queue_prefix}{tg}")
    assert forwarded == body
    assert method.exchange == ""
    assert props.delivery_mode == 2
    assert before <= props.timestamp <= time.time() + 1

    doc = api.get(f"/v2/tasks/{tid}").json()
    assert doc["task_id"] == tid
    assert doc["status"] == "success"
    assert doc["result"] == "11\n42"
    assert float(doc["completion_t"]) > before - 1
    assert doc["details"] == {"endpoint_id": ep}
    batch = api.post("/v2/batch_status", json={"task_ids": [tid, str(uuid.uuid4())]}).json()
    assert list(batch["results"]) == [tid]
    assert batch["results"][tid]["status"] == "success"
    assert api.get(f"/v2/taskgroup/{tg}").json() == {"taskgroup_id": tg, "tasks": [{"id": tid}]}
    timings = api.get("/v2/_bench/task_timings", params={"task_group_id": tg}).json()["tasks"]
    t = timings[tid]
    assert 0 < t["submit_received_ns"] < t["result_published_ns"]


def test_a_failed_result_is_an_exception_over_rest(
    service: ServiceThread, api: ApiClient, channel: BlockingChannel
) -> None:
    ep = api.register_endpoint()["endpoint_id"]
    _, tid, tg = submit_one(api, ep)
    err = {"code": "RemoteExecutionError", "user_message": "An error occurred"}
    failure = Result(task_id=tid, data="Traceback: boom", error_details=err)
    publish_result(channel, ep, pack(failure))
    get_one(channel, f"{service.settings.queue_prefix}{tg}")
    doc = api.get(f"/v2/tasks/{tid}").json()
    assert doc["status"] == "failed"
    assert doc["exception"] == "Traceback: boom"
    assert "result" not in doc


def test_pending_tasks_look_pending(api: ApiClient) -> None:
    ep = api.register_endpoint()["endpoint_id"]
    _, tid, _ = submit_one(api, ep)
    doc = api.get(f"/v2/tasks/{tid}").json()
    assert doc["status"] not in ("success", "failed")
    assert not doc["completion_t"]


def test_a_duplicate_result_is_not_forwarded_twice(
    service: ServiceThread, api: ApiClient, channel: BlockingChannel
) -> None:
    ep = api.register_endpoint()["endpoint_id"]
    fid = api.register_function(CODE)
    reply = api.submit(ep, {fid: [PAYLOAD, PAYLOAD]}).json()
    first, sentinel = reply["tasks"][fid]
    queue = f"{service.settings.queue_prefix}{reply['task_group_id']}"
    publish_result(channel, ep, success(first, ep, "11\n1"))
    assert get_one(channel, queue)[2] == success(first, ep, "11\n1")
    publish_result(channel, ep, success(first, ep, "11\n2"))
    # Results are handled in order: once the sentinel is through, the duplicate was handled.
    publish_result(channel, ep, success(sentinel, ep))
    assert unpack_as(get_one(channel, queue)[2], Result).task_id == sentinel
    assert queue_depth(channel, queue) == 0
    assert api.get(f"/v2/tasks/{first}").json()["result"] == "11\n1"


def test_malformed_and_unknown_results_are_dropped_not_requeued(
    service: ServiceThread, api: ApiClient, channel: BlockingChannel
) -> None:
    ep = api.register_endpoint()["endpoint_id"]
    _, tid, tg = submit_one(api, ep)
    publish_result(channel, ep, b"not messagepack")
    publish_result(channel, ep, pack(EPStatusReport(endpoint_id=ep)))
    publish_result(channel, ep, success(str(uuid.uuid4()), ep))
    publish_result(channel, ep, success(tid, ep))
    assert unpack_as(get_one(channel, f"{service.settings.queue_prefix}{tg}")[2], Result)
    wait_for(lambda: queue_depth(channel, "results") == 0)
    time.sleep(0.3)
    assert queue_depth(channel, "results") == 0


def test_many_results_flow_through_in_batches(
    service: ServiceThread, api: ApiClient, channel: BlockingChannel
) -> None:
    ep = api.register_endpoint()["endpoint_id"]
    fid = api.register_function(CODE)
    reply = api.submit(ep, {fid: [PAYLOAD] * 1000}).json()
    for tid in reply["tasks"][fid]:
        publish_result(channel, ep, success(tid, ep))
    queue = f"{service.settings.queue_prefix}{reply['task_group_id']}"
    wait_for(lambda: queue_depth(channel, queue) == 1000, timeout=30)
    statuses = api.post("/v2/batch_status", json={"task_ids": reply["tasks"][fid]}).json()
    assert {r["status"] for r in statuses["results"].values()} == {"success"}


# --- heartbeats -------------------------------------------------------------------------------


def _status(api: ApiClient, endpoint_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = api.get(f"/v2/endpoints/{endpoint_id}/status").json()
    return doc


def test_heartbeats_make_an_endpoint_online_and_its_last_words_offline(
    api: ApiClient, channel: BlockingChannel
) -> None:
    ep = api.register_endpoint()["endpoint_id"]
    assert _status(api, ep)["status"] == "offline"
    publish_heartbeat(channel, ep, {"heartbeat_period": 10, "active": True})
    wait_for(lambda: _status(api, ep)["status"] == "online")
    assert _status(api, ep)["details"]["heartbeat_period"] == 10
    publish_heartbeat(channel, ep, {"heartbeat_period": 10, "active": False})
    wait_for(lambda: _status(api, ep)["status"] == "offline")
    publish_heartbeat(channel, ep, {"heartbeat_period": 10})
    wait_for(lambda: _status(api, ep)["status"] == "online")
    # A core endpoint's shutdown heartbeat.
    publish_heartbeat(channel, ep, {"heartbeat_period": 0})
    wait_for(lambda: _status(api, ep)["status"] == "offline")


def test_an_endpoint_goes_offline_after_three_missed_periods(
    api: ApiClient, channel: BlockingChannel
) -> None:
    ep = api.register_endpoint()["endpoint_id"]
    publish_heartbeat(channel, ep, {"heartbeat_period": 0.2})
    wait_for(lambda: _status(api, ep)["status"] == "online")
    time.sleep(0.7)
    assert _status(api, ep)["status"] == "offline"


def test_a_start_failure_heartbeat_fails_the_waiting_tasks(
    service: ServiceThread, api: ApiClient, channel: BlockingChannel
) -> None:
    mgr = str(uuid.uuid4())
    api.put(f"/v3/endpoints/{mgr}", json={"endpoint_name": "m"})
    _, tid, tg = submit_one(api, mgr)
    uep = json.loads(get_one(channel, f"{mgr}.commands")[2])["kwargs"]["amqp_creds"]["endpoint_id"]
    error = "Ignoring start request for untrusted identity."
    # Exactly what the official manager's failure notice sends (no properties at all).
    publish_heartbeat(channel, uep, {"error": error, "heartbeat_period": 3})

    _, _, body = get_one(channel, f"{service.settings.queue_prefix}{tg}")
    result = unpack_as(body, Result)
    assert result.task_id == tid
    assert result.error_details is not None
    assert result.error_details["code"] == "EndpointStartupFailure"
    assert error in result.data
    doc = api.get(f"/v2/tasks/{tid}").json()
    assert doc["status"] == "failed"
    assert error in doc["exception"]
    assert _status(api, uep)["status"] == "offline"
    # A late real result for the failed task is not forwarded a second time.
    publish_result(channel, uep, success(tid, uep))
    time.sleep(0.5)
    assert queue_depth(channel, f"{service.settings.queue_prefix}{tg}") == 0


def test_a_live_manager_heartbeat_restarts_an_offline_user_endpoint_with_waiting_tasks(
    api: ApiClient, channel: BlockingChannel
) -> None:
    mgr = str(uuid.uuid4())
    api.put(f"/v3/endpoints/{mgr}", json={"endpoint_name": "m"})
    submit_one(api, mgr)
    first = json.loads(get_one(channel, f"{mgr}.commands")[2])
    publish_heartbeat(channel, mgr, {"heartbeat_period": 10})
    again = json.loads(get_one(channel, f"{mgr}.commands")[2])
    assert again["kwargs"]["amqp_creds"] == first["kwargs"]["amqp_creds"]
