"""Broker-level tenancy (issue 13, finding 1): client B, holding every broker credential the
service ever hands B, attacks client A's endpoint, manager and results over AMQP directly.

A real RabbitMQ, the real service. A runs a public single-user endpoint (so B legitimately
knows its id and may submit to it) and a manager; B has a single-user endpoint, a manager, a
user endpoint started by it, and an SDK account. Each attack is tried with each of B's accounts
and must be refused by the broker (403 ACCESS_REFUSED), or, where the broker cannot tell (a
result or heartbeat on B's own routing key that claims to be A's), dropped by the service.
Throughout, A's endpoint runs A's tasks: every one completes exactly once with A's result.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from devstack.testing import ApiClient, ServiceThread, service_settings
from endpoint.protocol.messages import EPStatusReport, Result, pack
from webservice.broker import PrivateRabbit

pytestmark = pytest.mark.integration

CODE = "12\n01\ngASVAA==\n"
PAYLOAD = "28\n00\ngASVBQAAAAAAAABLKIWULg==\n12\n00\ngAR9lC4=\n"
ACCESS_REFUSED = 403
NOT_FOUND = 404
TASKS = 40


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class FakeEndpoint:
    """A's endpoint: consumes its own task queue with its own account, answers each task
    with a result naming the task, on its own routing key."""

    reg: dict[str, Any]
    seen: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)

    def run(self) -> None:
        tq, rq = self.reg["task_queue_info"], self.reg["result_queue_info"]
        kw = rq["queue_publish_kwargs"]
        conn = pika.BlockingConnection(pika.URLParameters(tq["connection_url"]))
        ch = conn.channel()
        ch.confirm_delivery()
        while not self.stop.is_set():
            method, props, _body = ch.basic_get(tq["queue"], auto_ack=False)
            if method is None:
                conn.sleep(0.05)
                continue
            task_id = props.headers["task_uuid"]
            self.seen[task_id] += 1
            result = Result(task_id=task_id, data=f"11\nA-{task_id}")
            ch.basic_publish(
                kw["exchange"],
                kw["routing_key"],
                pack(result),
                pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )
            ch.basic_ack(method.delivery_tag)
        conn.close()


@pytest.fixture(scope="module")
def service(
    rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceThread]:
    db = tmp_path_factory.mktemp("tenancy") / "ws.db"
    settings = service_settings(rabbit, db)
    with ServiceThread(settings) as svc:
        yield svc


@dataclass
class Tenant:
    api: ApiClient
    endpoint: dict[str, Any]
    manager: dict[str, Any]
    sdk: dict[str, Any]
    uep_creds: dict[str, Any] | None = None

    @property
    def endpoint_id(self) -> str:
        return str(self.endpoint["endpoint_id"])

    def urls(self) -> dict[str, str]:
        """Every broker account this tenant was ever handed, by what it is."""
        found = {
            "endpoint": self.endpoint["task_queue_info"]["connection_url"],
            "manager": self.manager["command_queue_info"]["connection_url"],
            "sdk": self.sdk["connection_url"],
        }
        if self.uep_creds is not None:
            found["user endpoint"] = self.uep_creds["task_queue_info"]["connection_url"]
        return found


def _tenant(service: ServiceThread, name: str, public: bool) -> Tenant:
    api = service.new_identity(name)
    endpoint = api.register_endpoint(public=public)
    manager = api.register_endpoint(single_user=False)
    resp = api.get("/v2/get_amqp_result_connection_url")
    resp.raise_for_status()
    return Tenant(api, endpoint, manager, resp.json())


def _start_command(rabbit: PrivateRabbit, queue: str) -> dict[str, Any]:
    """The start command waiting on a manager's queue (read with the service's account)."""
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        ch = conn.channel()

        def get() -> bytes | None:
            method, _props, body = ch.basic_get(queue, auto_ack=True)
            return body if method is not None else None

        doc: dict[str, Any] = json.loads(wait_for("a start command", get, 30))
        return doc
    finally:
        conn.close()


def attempt(url: str, action: Callable[[BlockingChannel], Any]) -> int | None:
    """Run `action` on a fresh channel of `url`: None if it worked, else the broker's code."""
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.ProbableAuthenticationError:
        return ACCESS_REFUSED
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        action(ch)
        return None
    except pika.exceptions.ChannelClosedByBroker as e:
        return int(e.reply_code)
    finally:
        if conn.is_open:
            conn.close()


@pytest.fixture(scope="module")
def tenants(service: ServiceThread, rabbit: PrivateRabbit) -> Iterator[dict[str, Tenant]]:
    alice = _tenant(service, "alice", public=True)
    bob = _tenant(service, "bob", public=False)
    # B's manager starts a user endpoint for B: B's manager account reads the command.
    fid = bob.api.register_function(CODE)
    assert bob.api.submit(bob.manager["endpoint_id"], {fid: [PAYLOAD]}).status_code == 200
    command = _start_command(rabbit, bob.manager["command_queue_info"]["queue"])
    bob.uep_creds = command["kwargs"]["amqp_creds"]
    try:
        yield {"alice": alice, "bob": bob}
    finally:
        alice.api.close()
        bob.api.close()


@pytest.fixture(scope="module")
def alice_at_work(tenants: dict[str, Tenant]) -> Iterator[tuple[FakeEndpoint, list[str]]]:
    """A's tasks, submitted before any attack; A's endpoint starts serving them only after
    B's forgeries (see the test that starts it), so no real result can win by arriving first."""
    alice = tenants["alice"]
    fake = FakeEndpoint(alice.endpoint)
    fid = alice.api.register_function(CODE)
    reply = alice.api.submit(alice.endpoint_id, {fid: [PAYLOAD] * TASKS})
    assert reply.status_code == 200, reply.text
    try:
        yield fake, reply.json()["tasks"][fid]
    finally:
        fake.close()


ATTACKS: dict[str, Callable[[Tenant, BlockingChannel], Any]] = {
    # Receive A's function code and arguments: a queue bound to `tasks` with A's key.
    "tap A's tasks": lambda a, ch: ch.queue_bind(
        ch.queue_declare("", exclusive=True).method.queue,
        "tasks",
        a.endpoint["task_queue_info"]["queue"],
    ),
    # Even knowing the secret name, B cannot consume A's task queue.
    "consume A's task queue": lambda a, ch: ch.basic_consume(
        a.endpoint["task_queue_info"]["queue"], lambda *_: None
    ),
    "publish a task to A": lambda a, ch: ch.basic_publish(
        "tasks", a.endpoint["task_queue_info"]["queue"], b"x", mandatory=True
    ),
    "publish a task to A by the default exchange": lambda a, ch: ch.basic_publish(
        "", a.endpoint["task_queue_info"]["queue"], b"x"
    ),
    "forge a result on A's key": lambda a, ch: ch.basic_publish(
        "results", f"{a.endpoint_id}.results", pack(Result(task_id=str(uuid.uuid4()), data="x"))
    ),
    "forge a heartbeat on A's key": lambda a, ch: ch.basic_publish(
        "heartbeats",
        f"{a.endpoint_id}.heartbeats",
        pack(EPStatusReport(endpoint_id=a.endpoint_id, global_state={"heartbeat_period": 0})),
    ),
    "consume the service's results queue": lambda a, ch: ch.basic_consume(
        "results", lambda *_: None
    ),
    "consume the service's heartbeats queue": lambda a, ch: ch.basic_consume(
        "heartbeats", lambda *_: None
    ),
    "consume A's result queue": lambda a, ch: ch.basic_consume(
        f"{a.sdk['queue_prefix']}{uuid.uuid4()}", lambda *_: None
    ),
    "delete A's task queue": lambda a, ch: ch.queue_delete(a.endpoint["task_queue_info"]["queue"]),
    "delete the service's results queue": lambda a, ch: ch.queue_delete("results"),
    "forge a start command to A's manager": lambda a, ch: ch.basic_publish(
        "",
        a.manager["command_queue_info"]["queue"],
        json.dumps({"command": "cmd_start_endpoint", "kwargs": {"name": "x"}}).encode(),
        pika.BasicProperties(content_type="application/json", timestamp=int(time.time())),
    ),
    "declare a queue of its own": lambda a, ch: ch.queue_declare(f"bob-{uuid.uuid4()}"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_every_account_b_holds_is_refused_each_attack_on_a(
    tenants: dict[str, Tenant], alice_at_work: Any, attack: str
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    outcomes = {
        what: attempt(url, lambda ch: ATTACKS[attack](alice, ch))
        for what, url in bob.urls().items()
    }
    assert outcomes == dict.fromkeys(outcomes, ACCESS_REFUSED), outcomes


def _passive_declare(name: str, ch: BlockingChannel) -> None:
    ch.queue_declare(name, passive=True)


def test_b_cannot_even_learn_how_busy_a_is(tenants: dict[str, Tenant]) -> None:
    """A passive declare needs no permission in a vhost; the names B could know lead nowhere."""
    alice, bob = tenants["alice"], tenants["bob"]
    guesses = [
        f"{alice.endpoint_id}.tasks",
        f"{alice.manager['endpoint_id']}.commands",
        f"{bob.sdk['queue_prefix']}{uuid.uuid4()}",
    ]
    for url in bob.urls().values():
        for name in guesses:
            assert attempt(url, functools.partial(_passive_declare, name)) == NOT_FOUND
    # The secret parts differ per endpoint and per client.
    assert alice.sdk["queue_prefix"] != bob.sdk["queue_prefix"]
    assert (
        alice.endpoint["task_queue_info"]["queue"].split(".")[-1]
        != (bob.endpoint["task_queue_info"]["queue"].split(".")[-1])
    )


def _depths(rabbit: PrivateRabbit) -> tuple[int, int]:
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        ch = conn.channel()
        results = ch.queue_declare("results", passive=True).method
        heartbeats = ch.queue_declare("heartbeats", passive=True).method
        return results.message_count, heartbeats.message_count
    finally:
        conn.close()


def test_claims_on_b_s_own_keys_about_a_are_dropped_and_a_s_tasks_finish_once(
    rabbit: PrivateRabbit,
    tenants: dict[str, Tenant],
    alice_at_work: tuple[FakeEndpoint, list[str]],
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    fake, task_ids = alice_at_work
    # A result for each of A's tasks and an "offline" heartbeat for A's endpoint, published
    # by B's endpoint on B's own routing keys (which the broker allows).
    rk = bob.endpoint["result_queue_info"]["queue_publish_kwargs"]["routing_key"]
    hk = bob.endpoint["heartbeat_queue_info"]["queue_publish_kwargs"]["routing_key"]

    def forge(ch: BlockingChannel) -> None:
        for tid in task_ids:
            ch.basic_publish("results", rk, pack(Result(task_id=tid, data="11\nforged-by-B")))
        report = EPStatusReport(endpoint_id=alice.endpoint_id, global_state={"error": "forged"})
        ch.basic_publish("heartbeats", hk, pack(report))

    assert attempt(bob.urls()["endpoint"], forge) is None
    # The service has taken the forgeries off its queues (and dropped them): nothing of A's
    # changed, not a task finished, the endpoint not marked failed.
    wait_for("the service to drain its queues", lambda: _depths(rabbit) == (0, 0))
    status = alice.api.post("/v2/batch_status", json={"task_ids": task_ids}).json()["results"]
    assert {status[t]["status"] for t in task_ids} == {"waiting-for-ep"}
    fake.start()

    def all_done() -> dict[str, Any] | None:
        got = alice.api.post("/v2/batch_status", json={"task_ids": task_ids}).json()["results"]
        finished = all(got.get(t, {}).get("status") == "success" for t in task_ids)
        return got if finished and len(got) == len(task_ids) else None

    results = wait_for("A's tasks to complete", all_done)
    assert {t: results[t]["result"] for t in task_ids} == {t: f"11\nA-{t}" for t in task_ids}
    # Exactly once: no task was delivered to A's endpoint twice, or to anyone else.
    assert fake.seen == dict.fromkeys(task_ids, 1)


def test_a_s_sdk_account_reads_its_own_results(
    tenants: dict[str, Tenant], alice_at_work: tuple[FakeEndpoint, list[str]]
) -> None:
    """What the scoping leaves working: A's SDK account consumes A's own result queue."""
    alice = tenants["alice"]
    alice_at_work[0].start() if alice_at_work[0].thread is None else None
    fid = alice.api.register_function(CODE)
    tg = str(uuid.uuid4())
    reply = alice.api.submit(alice.endpoint_id, {fid: [PAYLOAD]}, task_group_id=tg)
    assert reply.status_code == 200, reply.text
    tid = reply.json()["tasks"][fid][0]
    conn = pika.BlockingConnection(pika.URLParameters(alice.sdk["connection_url"]))
    try:
        ch = conn.channel()

        def get() -> bytes | None:
            method, _props, body = ch.basic_get(f"{alice.sdk['queue_prefix']}{tg}", auto_ack=True)
            return body if method is not None else None

        body = wait_for("A's result on A's queue", get)
    finally:
        conn.close()
    assert f"A-{tid}".encode() in body


def test_a_rotated_or_revoked_account_stops_working(
    service: ServiceThread, tenants: dict[str, Tenant]
) -> None:
    api = tenants["bob"].api
    first = api.register_endpoint()
    eid = first["endpoint_id"]
    old_url = first["task_queue_info"]["connection_url"]
    queue = first["task_queue_info"]["queue"]
    held = pika.BlockingConnection(pika.URLParameters(old_url))
    assert attempt(old_url, lambda ch: ch.queue_declare(queue, passive=True)) is None
    # Re-registration (every start) rotates: the old password is refused from now on.
    again = api.put(f"/v3/endpoints/{eid}", json={"endpoint_name": "ep"}).json()
    new_url = again["task_queue_info"]["connection_url"]
    assert new_url != old_url
    assert attempt(old_url, lambda ch: None) == ACCESS_REFUSED
    assert attempt(new_url, lambda ch: ch.queue_declare(queue, passive=True)) is None
    # Deletion revokes: the account is gone and its open connections are closed.
    assert api.delete(f"/v2/endpoints/{eid}").status_code == 200
    assert attempt(new_url, lambda ch: None) == ACCESS_REFUSED

    def closed() -> bool:
        try:
            held.process_data_events(0.1)
        except pika.exceptions.AMQPConnectionError:
            return True
        return not held.is_open

    try:
        wait_for("the deleted endpoint's open connection to be closed", closed, 30)
    finally:
        if held.is_open:
            held.close()
    # Its owner may register the id again: with a password it never had before.
    back = api.put(f"/v3/endpoints/{eid}", json={"endpoint_name": "ep"}).json()
    third = back["task_queue_info"]["connection_url"]
    assert third not in (old_url, new_url)
    assert attempt(old_url, lambda ch: None) == ACCESS_REFUSED
    assert attempt(new_url, lambda ch: None) == ACCESS_REFUSED
    assert attempt(third, lambda ch: ch.queue_declare(queue, passive=True)) is None


def test_a_deleted_endpoint_id_cannot_be_taken_over(
    service: ServiceThread, tenants: dict[str, Tenant]
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    eid = alice.api.register_endpoint()["endpoint_id"]
    assert alice.api.delete(f"/v2/endpoints/{eid}").status_code == 200
    taken = bob.api.put(f"/v3/endpoints/{eid}", json={"endpoint_name": "mine now"})
    assert taken.status_code == 409, taken.text
    # Its owner may bring it back (the id is still theirs).
    back = alice.api.put(f"/v3/endpoints/{eid}", json={"endpoint_name": "ep"})
    assert back.status_code == 200, back.text
