"""The web service against a real broker: tasks out, commands out, results and heartbeats in."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from devstack.testing import ApiClient, ServiceThread, service_settings
from endpoint.protocol.messages import EPStatusReport, Result, Task, pack, unpack_as
from webservice.broker import PrivateRabbit

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
    settings = service_settings(
        rabbit,
        db,
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
    """The service's own (administrator) account: only to peek at queues for assertions."""
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


class FakeEndpoint:
    """An endpoint, or a manager's user endpoint, that uses only what the service handed it
    (a registration reply, or a start command's `amqp_creds`): its own broker account, its own
    queues, its own routing keys. Publishes are confirmed, so one the broker refuses fails."""

    def __init__(self, infos: dict[str, Any]) -> None:
        self.infos = infos
        self.endpoint_id: str = infos["endpoint_id"]
        self.url: str = infos["task_queue_info"]["connection_url"]
        self._conn = pika.BlockingConnection(pika.URLParameters(self.url))
        self.channel = self._conn.channel()
        self.channel.confirm_delivery()

    @property
    def tasks_queue(self) -> str:
        queue: str = self.infos["task_queue_info"]["queue"]
        return queue

    def get_task(self) -> Message:
        return get_one(self.channel, self.tasks_queue)

    def get_command(self) -> dict[str, Any]:
        command: dict[str, Any] = json.loads(
            get_one(self.channel, self.infos["command_queue_info"]["queue"])[2]
        )
        return command

    def _publish(self, kind: str, body: bytes, bare: bool = False) -> None:
        kw = self.infos[f"{kind}_queue_info"]["queue_publish_kwargs"]
        props = None if bare else pika.BasicProperties(**kw["properties"])
        self.channel.basic_publish(
            kw["exchange"], kw["routing_key"], body, props, mandatory=kw["mandatory"]
        )

    def publish_result(self, body: bytes) -> None:
        self._publish("result", body)

    def publish_heartbeat(self, state: dict[str, Any], bare: bool = False) -> None:
        body = pack(EPStatusReport(endpoint_id=self.endpoint_id, global_state=state))
        self._publish("heartbeat", body, bare)

    def close(self) -> None:
        if self._conn.is_open:
            self._conn.close()


Endpoints = Callable[[dict[str, Any]], FakeEndpoint]


@pytest.fixture
def endpoints() -> Iterator[Endpoints]:
    """`endpoints(infos)`: a connected FakeEndpoint, closed after the test."""
    made: list[FakeEndpoint] = []

    def connect(infos: dict[str, Any]) -> FakeEndpoint:
        made.append(FakeEndpoint(infos))
        return made[-1]

    yield connect
    for fake in made:
        fake.close()


class ResultWatcher:
    """The SDK's side: the result queues of one client's task groups, read with the account
    and prefix that `/v2/get_amqp_result_connection_url` hands that client."""

    def __init__(self, api: ApiClient) -> None:
        doc = api.get("/v2/get_amqp_result_connection_url").json()
        self.prefix: str = doc["queue_prefix"]
        self._conn = pika.BlockingConnection(pika.URLParameters(doc["connection_url"]))
        self.channel = self._conn.channel()

    def queue(self, task_group_id: str) -> str:
        return f"{self.prefix}{task_group_id}"

    def get_one(self, task_group_id: str) -> Message:
        return get_one(self.channel, self.queue(task_group_id))

    def close(self) -> None:
        if self._conn.is_open:
            self._conn.close()


@pytest.fixture
def sdk(api: ApiClient) -> Iterator[ResultWatcher]:
    watcher = ResultWatcher(api)
    try:
        yield watcher
    finally:
        watcher.close()


def register_manager(api: ApiClient) -> dict[str, Any]:
    resp = api.put(f"/v3/endpoints/{uuid.uuid4()}", json={"endpoint_name": "m"})
    assert resp.status_code == 200, resp.text
    reply: dict[str, Any] = resp.json()
    return reply


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
    api: ApiClient, endpoints: Endpoints, sdk: ResultWatcher, channel: BlockingChannel
) -> None:
    fake = endpoints(api.register_endpoint())
    ep = fake.endpoint_id
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
    assert queue_depth(channel, sdk.queue(reply["task_group_id"])) == 0

    expected = [(f1, reply["tasks"][f1][0], CODE + PAYLOAD)]
    expected += [(f1, reply["tasks"][f1][1], CODE + PAYLOAD + "x")]
    expected += [(f2, reply["tasks"][f2][0], "9\n01\nabcdef" + PAYLOAD)]
    for fid, tid, buffer in expected:
        method, props, body = fake.get_task()
        assert method.exchange == "tasks"
        assert method.routing_key == fake.tasks_queue
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


def test_user_endpoint_config_sent_to_a_single_user_endpoint_is_warned_about_not_refused(
    api: ApiClient, endpoints: Endpoints, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a core endpoint renders options into a user endpoint: a single-user endpoint runs
    the tasks as they are, and the service's log says the options were ignored."""
    fake = endpoints(api.register_endpoint())
    fid = api.register_function(CODE)
    with caplog.at_level("WARNING", logger="webservice.dispatch"):
        resp = api.submit(
            fake.endpoint_id, {fid: [PAYLOAD]}, user_endpoint_config={"worker_init": "x"}
        )
    assert resp.status_code == 200, resp.text
    warned = [r.getMessage() for r in caplog.records if r.name == "webservice.dispatch"]
    assert any(
        fake.endpoint_id in m and "single-user" in m and "['worker_init']" in m for m in warned
    ), warned
    _method, _props, body = fake.get_task()
    assert unpack_as(body, Task).task_id == resp.json()["tasks"][fid][0]


def test_absent_resource_specification_is_the_string_null(
    api: ApiClient, endpoints: Endpoints
) -> None:
    fake = endpoints(api.register_endpoint())
    submit_one(api, fake.endpoint_id)
    _, props, _ = fake.get_task()
    assert props.headers["resource_specification"] == "null"
    assert props.headers["result_serializers"] == []


def test_submit_to_a_manager_starts_a_user_endpoint_then_queues_its_tasks(
    service: ServiceThread, api: ApiClient, endpoints: Endpoints
) -> None:
    manager = endpoints(register_manager(api))
    mgr = manager.endpoint_id
    config = {"worker_init": "true"}
    before = int(time.time())
    fid, tid, _ = submit_one(api, mgr, user_endpoint_config=config, user_runtime=RUNTIME)

    method, props, body = get_one(manager.channel, manager.infos["command_queue_info"]["queue"])
    assert method.exchange == ""
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert isinstance(props.timestamp, int)
    assert before <= props.timestamp <= time.time() + 1
    cmd = json.loads(body)
    creds = cmd["kwargs"]["amqp_creds"]
    uep = creds["endpoint_id"]
    assert uep != mgr
    # The user endpoint's own broker account (neither the service's nor the manager's), at the
    # service's broker, and its own tasks queue, whose name only the service hands out.
    url = creds["task_queue_info"]["connection_url"]
    mine, theirs = urlsplit(url), urlsplit(service.settings.amqp_url)
    assert mine.username == f"ep.{uep}"
    assert mine.password and mine.password != theirs.password
    assert (mine.hostname, mine.port, mine.path) == (theirs.hostname, theirs.port, theirs.path)
    assert url != manager.url
    tasks_queue = creds["task_queue_info"]["queue"]
    assert tasks_queue.startswith(f"{uep}.tasks.") and len(tasks_queue) > len(f"{uep}.tasks.")
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
                    "queue": tasks_queue,
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
    # The user endpoint, with what the command gave it, finds its task.
    _, tprops, tbody = endpoints(creds).get_task()
    assert tprops.headers["task_uuid"] == tid
    assert tprops.headers["function_uuid"] == fid
    assert unpack_as(tbody, Task).task_buffer == CODE + PAYLOAD

    # Same caller and config: same UEP, and the command is sent again; new config: a new UEP.
    submit_one(api, mgr, user_endpoint_config=dict(reversed(config.items())))
    again = manager.get_command()
    assert again["kwargs"]["amqp_creds"]["endpoint_id"] == uep
    assert again["kwargs"]["amqp_creds"]["task_queue_info"]["queue"] == tasks_queue
    submit_one(api, mgr, user_endpoint_config={"worker_init": "false"})
    other = manager.get_command()
    assert other["kwargs"]["amqp_creds"]["endpoint_id"] != uep
    assert other["kwargs"]["user_opts"] == {"worker_init": "false"}


def test_submit_without_config_sends_empty_user_opts(api: ApiClient, endpoints: Endpoints) -> None:
    manager = endpoints(register_manager(api))
    submit_one(api, manager.endpoint_id)
    assert manager.get_command()["kwargs"]["user_opts"] == {}


# --- results in -------------------------------------------------------------------------------


def test_a_result_is_stored_and_forwarded_byte_for_byte(
    api: ApiClient, endpoints: Endpoints, sdk: ResultWatcher
) -> None:
    fake = endpoints(api.register_endpoint())
    ep = fake.endpoint_id
    _, tid, tg = submit_one(api, ep)
    body = success(tid, ep)
    before = int(time.time())
    fake.publish_result(body)

    method, props, forwarded = sdk.get_one(tg)
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
    api: ApiClient, endpoints: Endpoints, sdk: ResultWatcher
) -> None:
    fake = endpoints(api.register_endpoint())
    _, tid, tg = submit_one(api, fake.endpoint_id)
    err = {"code": "RemoteExecutionError", "user_message": "An error occurred"}
    failure = Result(task_id=tid, data="Traceback: boom", error_details=err)
    fake.publish_result(pack(failure))
    sdk.get_one(tg)
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
    api: ApiClient, endpoints: Endpoints, sdk: ResultWatcher, channel: BlockingChannel
) -> None:
    fake = endpoints(api.register_endpoint())
    ep = fake.endpoint_id
    fid = api.register_function(CODE)
    reply = api.submit(ep, {fid: [PAYLOAD, PAYLOAD]}).json()
    first, sentinel = reply["tasks"][fid]
    tg = reply["task_group_id"]
    fake.publish_result(success(first, ep, "11\n1"))
    assert sdk.get_one(tg)[2] == success(first, ep, "11\n1")
    fake.publish_result(success(first, ep, "11\n2"))
    # Results are handled in order: once the sentinel is through, the duplicate was handled.
    fake.publish_result(success(sentinel, ep))
    assert unpack_as(sdk.get_one(tg)[2], Result).task_id == sentinel
    assert queue_depth(channel, sdk.queue(tg)) == 0
    assert api.get(f"/v2/tasks/{first}").json()["result"] == "11\n1"


def test_malformed_and_unknown_results_are_dropped_not_requeued(
    api: ApiClient, endpoints: Endpoints, sdk: ResultWatcher, channel: BlockingChannel
) -> None:
    fake = endpoints(api.register_endpoint())
    ep = fake.endpoint_id
    _, tid, tg = submit_one(api, ep)
    fake.publish_result(b"not messagepack")
    fake.publish_result(pack(EPStatusReport(endpoint_id=ep)))
    fake.publish_result(success(str(uuid.uuid4()), ep))
    fake.publish_result(success(tid, ep))
    assert unpack_as(sdk.get_one(tg)[2], Result)
    wait_for(lambda: queue_depth(channel, "results") == 0)
    time.sleep(0.3)
    assert queue_depth(channel, "results") == 0


def test_many_results_flow_through_in_batches(
    api: ApiClient, endpoints: Endpoints, sdk: ResultWatcher, channel: BlockingChannel
) -> None:
    fake = endpoints(api.register_endpoint())
    ep = fake.endpoint_id
    fid = api.register_function(CODE)
    reply = api.submit(ep, {fid: [PAYLOAD] * 1000}).json()
    for tid in reply["tasks"][fid]:
        fake.publish_result(success(tid, ep))
    queue = sdk.queue(reply["task_group_id"])
    wait_for(lambda: queue_depth(channel, queue) == 1000, timeout=30)
    statuses = api.post("/v2/batch_status", json={"task_ids": reply["tasks"][fid]}).json()
    assert {r["status"] for r in statuses["results"].values()} == {"success"}


# --- heartbeats -------------------------------------------------------------------------------


def _status(api: ApiClient, endpoint_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = api.get(f"/v2/endpoints/{endpoint_id}/status").json()
    return doc


def test_heartbeats_make_an_endpoint_online_and_its_last_words_offline(
    api: ApiClient, endpoints: Endpoints
) -> None:
    fake = endpoints(api.register_endpoint())
    ep = fake.endpoint_id
    assert _status(api, ep)["status"] == "offline"
    fake.publish_heartbeat({"heartbeat_period": 10, "active": True})
    wait_for(lambda: _status(api, ep)["status"] == "online")
    assert _status(api, ep)["details"]["heartbeat_period"] == 10
    fake.publish_heartbeat({"heartbeat_period": 10, "active": False})
    wait_for(lambda: _status(api, ep)["status"] == "offline")
    fake.publish_heartbeat({"heartbeat_period": 10})
    wait_for(lambda: _status(api, ep)["status"] == "online")
    # A core endpoint's shutdown heartbeat.
    fake.publish_heartbeat({"heartbeat_period": 0})
    wait_for(lambda: _status(api, ep)["status"] == "offline")


def test_an_endpoint_goes_offline_after_three_missed_periods(
    api: ApiClient, endpoints: Endpoints
) -> None:
    fake = endpoints(api.register_endpoint())
    ep = fake.endpoint_id
    fake.publish_heartbeat({"heartbeat_period": 0.2})
    wait_for(lambda: _status(api, ep)["status"] == "online")
    time.sleep(0.7)
    assert _status(api, ep)["status"] == "offline"


def test_a_start_failure_heartbeat_fails_the_waiting_tasks(
    api: ApiClient, endpoints: Endpoints, sdk: ResultWatcher, channel: BlockingChannel
) -> None:
    manager = endpoints(register_manager(api))
    _, tid, tg = submit_one(api, manager.endpoint_id)
    # The manager reports the failure with the credentials of the user endpoint it could not
    # start, exactly as the official manager's failure notice does (no properties at all).
    uep = endpoints(manager.get_command()["kwargs"]["amqp_creds"])
    error = "Ignoring start request for untrusted identity."
    uep.publish_heartbeat({"error": error, "heartbeat_period": 3}, bare=True)

    _, _, body = sdk.get_one(tg)
    result = unpack_as(body, Result)
    assert result.task_id == tid
    assert result.error_details is not None
    assert result.error_details["code"] == "EndpointStartupFailure"
    assert error in result.data
    doc = api.get(f"/v2/tasks/{tid}").json()
    assert doc["status"] == "failed"
    assert error in doc["exception"]
    assert _status(api, uep.endpoint_id)["status"] == "offline"
    # A late real result for the failed task is not forwarded a second time.
    uep.publish_result(success(tid, uep.endpoint_id))
    time.sleep(0.5)
    assert queue_depth(channel, sdk.queue(tg)) == 0


def test_a_live_manager_heartbeat_restarts_an_offline_user_endpoint_with_waiting_tasks(
    api: ApiClient, endpoints: Endpoints
) -> None:
    manager = endpoints(register_manager(api))
    _, tid, _ = submit_one(api, manager.endpoint_id)
    first = manager.get_command()["kwargs"]["amqp_creds"]
    manager.publish_heartbeat({"heartbeat_period": 10})
    again = manager.get_command()["kwargs"]["amqp_creds"]
    # The same user endpoint, the same queues, the same account; a new password, since this
    # command starts it anew.
    assert again["endpoint_id"] == first["endpoint_id"]
    blocks = ("task_queue_info", "result_queue_info", "heartbeat_queue_info")
    for block in blocks:
        assert {**again[block], "connection_url": None} == {**first[block], "connection_url": None}
    old, new = (urlsplit(c["task_queue_info"]["connection_url"]) for c in (first, again))
    assert new.username == old.username == f"ep.{first['endpoint_id']}"
    assert new.password != old.password
    assert (new.hostname, new.port, new.path) == (old.hostname, old.port, old.path)
    # The revived user endpoint, with what the new command gave it, finds the waiting task.
    _, props, _ = endpoints(again).get_task()
    assert props.headers["task_uuid"] == tid
