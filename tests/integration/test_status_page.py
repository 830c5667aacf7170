"""The status page over HTTP: sign-in, the session cookie, what it shows, and isolation.

A real service (in a thread) on the session's real RabbitMQ; endpoints are played by clients
that use only what registration handed them (their own broker account and routing keys), so
heartbeats and results arrive through the service's real consumers.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pika
import pytest

from devstack.testing import ApiClient, ServiceThread, fetch_token, service_settings
from endpoint.protocol.messages import EPStatusReport, Result, pack
from webservice.broker import PrivateRabbit
from webservice.store import Store

pytestmark = pytest.mark.integration

CODE = "12\n01\ngASVAA==\n"
PAYLOAD = "28\n00\ngASVBQAAAAAAAABLKIWULg==\n12\n00\ngAR9lC4=\n"
#: Endpoint-supplied text with markup in it: it must reach the page escaped, never as markup.
HOSTILE = "<script>alert('x')</script><b>bold</b>"


class Identity:
    """A client: its secret (to sign in) and an API client with its token."""

    def __init__(self, service: ServiceThread, name: str) -> None:
        self.client_id, self.secret = service.create_client(name)
        self.api = ApiClient(
            service.url, self.client_id, fetch_token(service.url, self.client_id, self.secret)
        )


class FakeEndpoint:
    """Publishes heartbeats and results with the broker account registration handed out."""

    def __init__(self, infos: dict[str, Any]) -> None:
        self.infos = infos
        self.endpoint_id: str = infos["endpoint_id"]
        url = infos["task_queue_info"]["connection_url"]
        self._conn = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self._conn.channel()
        self.channel.confirm_delivery()

    def _publish(self, kind: str, body: bytes) -> None:
        kw = self.infos[f"{kind}_queue_info"]["queue_publish_kwargs"]
        props = pika.BasicProperties(**kw["properties"])
        self.channel.basic_publish(kw["exchange"], kw["routing_key"], body, props, mandatory=True)

    def heartbeat(self, state: dict[str, Any]) -> None:
        self._publish("heartbeat", pack(EPStatusReport(self.endpoint_id, global_state=state)))

    def result(self, result: Result) -> None:
        self._publish("result", pack(result))

    def close(self) -> None:
        if self._conn.is_open:
            self._conn.close()


@pytest.fixture(scope="module")
def service(
    rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceThread]:
    db = tmp_path_factory.mktemp("status-page") / "ws.db"
    with ServiceThread(service_settings(rabbit, db)) as svc:
        yield svc


@pytest.fixture(scope="module")
def alice(service: ServiceThread) -> Iterator[Identity]:
    who = Identity(service, "alice")
    yield who
    who.api.close()


@pytest.fixture(scope="module")
def bob(service: ServiceThread) -> Iterator[Identity]:
    who = Identity(service, "bob")
    yield who
    who.api.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def alices_world(alice: Identity) -> Iterator[dict[str, str]]:
    """Alice's single-user endpoint (online, with workers, blocks, containers and an open
    block breaker), a succeeded and a failed task on it, and a core endpoint that started a
    user endpoint for her."""
    fake = FakeEndpoint(alice.api.register_endpoint(endpoint_name="alices-ep"))
    try:
        yield _populate(alice, fake)
    finally:
        fake.close()


def _populate(alice: Identity, fake: FakeEndpoint) -> dict[str, str]:
    ep = fake.endpoint_id
    fake.heartbeat(
        {
            "heartbeat_period": 30,
            "active": True,
            "engine_type": "GlobusComputeEngine",
            "total_workers": 3,
            "idle_workers": 1,
            "pending_tasks": 4,
            "running_tasks": 2,
            "blocks": {"RUNNING": 1, "FAILED": 2},
            "min_blocks": 0,
            "max_blocks": 2,
            "provider_type": "SlurmProvider",
            "containers": {
                "container_routing": "soft",
                "warm_pools": 1,
                "starting_pools": 0,
                "waiting_tasks": 0,
                "pools": [{"image": "img:1", "state": "ready", "inflight": 0, "served": 7}],
            },
            "engine_breaker": {
                "state": "open",
                "kind": "blocks",
                "trips": 1,
                "reason": f"block 0: job 42, FAILED\n  stderr:\n    | worker_init: {HOSTILE}",
                "retry_after_unix": time.time() + 60,
            },
        }
    )
    fid = alice.api.register_function(CODE)
    reply = alice.api.submit(ep, {fid: [PAYLOAD, PAYLOAD]})
    assert reply.status_code == 200, reply.text
    ok, bad = reply.json()["tasks"][fid]
    fake.result(Result(task_id=ok, data="11\n42", details={"endpoint_id": ep}))
    traceback = f"Traceback (most recent call last):\nZeroDivisionError: {HOSTILE}"
    fake.result(
        Result(
            task_id=bad,
            data=traceback,
            error_details={"code": "RemoteError", "user_message": "boom"},
        )
    )
    wait_for(lambda: alice.api.get(f"/v2/tasks/{bad}").json()["status"] == "failed")
    wait_for(lambda: alice.api.get(f"/v2/tasks/{ok}").json()["status"] == "success")
    wait_for(lambda: alice.api.get(f"/v2/endpoints/{ep}/status").json()["status"] == "online")

    manager = alice.api.put(f"/v3/endpoints/{uuid.uuid4()}", json={"endpoint_name": "core"})
    assert manager.status_code == 200, manager.text
    mgr = manager.json()["endpoint_id"]
    sent = alice.api.submit(mgr, {fid: [PAYLOAD]}, user_endpoint_config={"worker_init": "true"})
    assert sent.status_code == 200, sent.text
    return {"ep": ep, "ok": ok, "bad": bad, "manager": mgr}


def _login_token(page: str) -> str:
    found = re.search(r'name="login_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def _sign_in(browser: httpx.Client, who: Identity) -> httpx.Response:
    """Fetch the sign-in form and post `who`'s credentials with its one-time token."""
    form = browser.get("/status/login")
    return browser.post(
        "/status/login",
        data={
            "login_token": _login_token(form.text),
            "client_id": who.client_id,
            "client_secret": who.secret,
        },
    )


@contextmanager
def signed_in(service: ServiceThread, who: Identity) -> Iterator[httpx.Client]:
    """A browser-like client holding `who`'s session cookie."""
    with httpx.Client(base_url=service.url, headers={"Origin": service.url}) as browser:
        answer = _sign_in(browser, who)
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/status"
        yield browser


def _cookie_header(response: httpx.Response, name: str) -> str:
    found = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert len(found) == 1, response.headers
    return found[0].lower()


def test_the_page_asks_for_a_sign_in_and_the_session_cookie_is_locked_down(
    service: ServiceThread, alice: Identity
) -> None:
    with httpx.Client(base_url=service.url) as anonymous:
        first = anonymous.get("/status")
        assert (first.status_code, first.headers["location"]) == (303, "/status/login")
        detail = anonymous.get(f"/status/endpoints/{uuid.uuid4()}")
        assert (detail.status_code, detail.headers["location"]) == (303, "/status/login")
        out = anonymous.post("/status/logout", data={"csrf_token": "x"})
        assert (out.status_code, out.headers["location"]) == (303, "/status/login")
        form = anonymous.get("/status/login")
        assert form.status_code == 200
        assert "no-store" in form.headers["cache-control"]
        assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
        pre = _cookie_header(form, "status_login")
        assert "httponly" in pre and "samesite=strict" in pre and "path=/status" in pre

    with httpx.Client(base_url=service.url, headers={"Origin": service.url}) as browser:
        answer = _sign_in(browser, alice)
        cookie = _cookie_header(answer, "status_session")
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/status" in cookie
        assert "secure" not in cookie  # plain http on loopback; Secure when served over https
        session = browser.cookies["status_session"]
        page = browser.get("/status")
        assert page.status_code == 200 and alice.client_id in page.text
        # Opaque: the cookie's value appears nowhere in the page, and is no API token.
        assert session not in page.text
        api = httpx.get(
            f"{service.url}/v2/endpoints", headers={"Authorization": f"Bearer {session}"}
        )
        assert api.status_code == 401


def test_a_wrong_secret_a_forged_form_or_another_origin_gives_no_session(
    service: ServiceThread, alice: Identity
) -> None:
    def attempt(origin: str, token: str | None, secret: str) -> httpx.Response:
        with httpx.Client(base_url=service.url, headers={"Origin": origin}) as b:
            real = _login_token(b.get("/status/login").text)
            data = {"login_token": real if token is None else token}
            data.update(client_id=alice.client_id, client_secret=secret)
            answer = b.post("/status/login", data=data)
            assert "status_session" not in answer.headers.get("set-cookie", "")
            assert b.get("/status").status_code == 303
            return answer

    assert attempt(service.url, None, "x" * 43).status_code == 401
    # Login CSRF: a token the attacker's page made up, or a post from another site.
    assert attempt(service.url, "forged", alice.secret).status_code == 400
    assert attempt("https://evil.example", None, alice.secret).status_code == 400


def test_it_shows_endpoints_tasks_tracebacks_and_block_failures_all_escaped(
    service: ServiceThread, alice: Identity, alices_world: dict[str, str]
) -> None:
    w = alices_world
    with signed_in(service, alice) as browser:
        page = browser.get("/status").text
        assert f'id="ep-{w["ep"]}" class="endpoint" data-state="online"' in page
        assert "alices-ep" in page and "GlobusComputeEngine" in page
        assert "RUNNING: 1, FAILED: 2" in page
        assert f'id="task-{w["ok"]}" class="task" data-status="success"' in page
        assert f'id="task-{w["bad"]}" class="task" data-status="failed"' in page
        assert f'id="traceback-{w["bad"]}">Traceback (most recent call last):' in page
        # A core endpoint and the user endpoint it started for Alice (offline: no heartbeat).
        assert f'id="ep-{w["manager"]}" class="endpoint" data-state="offline"' in page
        assert "User endpoints of core started for you" in page
        assert "<script>" not in page and "<b>bold</b>" not in page
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page

        detail = browser.get(f"/status/endpoints/{w['ep']}")
        assert detail.status_code == 200
        text = detail.text
        assert 'id="breaker-report">block 0: job 42, FAILED' in text
        assert "worker_init: &lt;script&gt;" in text and "<script>" not in text
        assert "img:1" in text and "0..2 (SlurmProvider)" in text
        assert f'id="traceback-{w["bad"]}"' in text


def test_another_identity_sees_none_of_it_and_gets_404_for_its_ids(
    service: ServiceThread, alice: Identity, bob: Identity, alices_world: dict[str, str]
) -> None:
    w = alices_world
    rows = _db_rows(service, "SELECT uep_id FROM user_endpoints WHERE manager_id=?", w["manager"])
    uep_ids = [r[0] for r in rows]
    assert len(uep_ids) == 1
    with signed_in(service, bob) as browser:
        page = browser.get("/status").text
        assert bob.client_id in page and "no tasks yet" in page
        for secret_id in (*w.values(), *uep_ids, alice.client_id):
            assert secret_id not in page
        missing = browser.get(f"/status/endpoints/{uuid.uuid4()}")
        assert missing.status_code == 404
        for endpoint_id in (w["ep"], w["manager"], *uep_ids):
            theirs = browser.get(f"/status/endpoints/{endpoint_id}")
            assert theirs.status_code == 404
            # Not even the existence of the id shows.
            assert theirs.text == missing.text
    # Alice still sees her user endpoint's own page.
    with signed_in(service, alice) as browser:
        assert browser.get(f"/status/endpoints/{uep_ids[0]}").status_code == 200


def _db_rows(service: ServiceThread, sql: str, *args: str) -> list[tuple[Any, ...]]:
    store = Store.open(service.settings.db_path)
    try:
        return [tuple(r) for r in store.db.conn.execute(sql, args).fetchall()]
    finally:
        store.close()


def test_sign_out_needs_the_csrf_token_and_ends_the_session_on_the_server(
    service: ServiceThread, alice: Identity
) -> None:
    with signed_in(service, alice) as browser:
        stolen = _sign_out_checks(browser)
    # The old cookie, replayed by whoever copied it, is dead on the server too.
    with httpx.Client(base_url=service.url, cookies={"status_session": stolen}) as replay:
        assert replay.get("/status").status_code == 303


def _sign_out_checks(browser: httpx.Client) -> str:
    stolen = browser.cookies["status_session"]
    page = browser.get("/status").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    refused = browser.post("/status/logout", data={"csrf_token": "wrong"})
    assert refused.status_code == 403
    assert browser.get("/status").status_code == 200
    cross = browser.post(
        "/status/logout", data={"csrf_token": csrf.group(1)}, headers={"Origin": "http://evil"}
    )
    assert cross.status_code == 403
    out = browser.post("/status/logout", data={"csrf_token": csrf.group(1)})
    assert (out.status_code, out.headers["location"]) == (303, "/status/login")
    assert browser.get("/status").status_code == 303
    return stolen
