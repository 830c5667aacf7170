"""The web service's REST surface: auth, ownership, error bodies, registration shapes."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from devstack.testing import ApiClient, ServiceThread, service_settings
from webservice.broker import PrivateRabbit
from webservice.scopes import COMPUTE_SCOPE

pytestmark = pytest.mark.integration

AUTH_SCOPES = "openid urn:globus:auth:scope:auth.globus.org:manage_projects"


@pytest.fixture(scope="module")
def service(
    rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceThread]:
    db = tmp_path_factory.mktemp("ws-api") / "ws.db"
    with ServiceThread(service_settings(rabbit, db)) as svc:
        yield svc


@pytest.fixture
def alice(service: ServiceThread) -> Iterator[ApiClient]:
    with service.new_identity("alice") as api:
        yield api


@pytest.fixture
def bob(service: ServiceThread) -> Iterator[ApiClient]:
    with service.new_identity("bob") as api:
        yield api


def _token(service: ServiceThread, scope: str, auth: tuple[str, str]) -> httpx.Response:
    return httpx.post(
        f"{service.url}/v2/oauth2/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=auth,
    )


# --- OAuth2 --------------------------------------------------------------------------------


def test_token_request_for_one_resource_server_gets_exactly_one_token(
    service: ServiceThread,
) -> None:
    cid, secret = service.create_client()
    # The endpoint's globus-sdk app repeats the scope; it must still get a single token.
    resp = _token(service, f"{COMPUTE_SCOPE} {COMPUTE_SCOPE}", auth=(cid, secret))
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["resource_server"] == "funcx_service"
    assert doc["token_type"] == "Bearer"
    assert doc["scope"] == COMPUTE_SCOPE
    assert doc["expires_in"] > 3600
    assert doc["other_tokens"] == []


def test_token_request_for_two_resource_servers_puts_the_second_in_other_tokens(
    service: ServiceThread,
) -> None:
    cid, secret = service.create_client()
    resp = _token(service, f"{AUTH_SCOPES} {COMPUTE_SCOPE}", auth=(cid, secret))
    doc = resp.json()
    assert doc["resource_server"] == "auth.globus.org"
    assert doc["scope"] == AUTH_SCOPES
    assert [t["resource_server"] for t in doc["other_tokens"]] == ["funcx_service"]


def test_form_client_credentials_work_like_basic_auth(service: ServiceThread) -> None:
    cid, secret = service.create_client()
    resp = httpx.post(
        f"{service.url}/v2/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "scope": COMPUTE_SCOPE,
            "client_id": cid,
            "client_secret": secret,
        },
    )
    assert resp.status_code == 200
    assert resp.json()["resource_server"] == "funcx_service"


def test_wrong_client_secret_is_401_invalid_client(service: ServiceThread) -> None:
    cid, _ = service.create_client()
    resp = _token(service, COMPUTE_SCOPE, auth=(cid, "wrong"))
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


def test_unknown_scope_and_grant_are_400(service: ServiceThread) -> None:
    cid, secret = service.create_client()
    assert _token(service, "not-a-scope", auth=(cid, secret)).status_code == 400
    resp = httpx.post(
        f"{service.url}/v2/oauth2/token", data={"grant_type": "password"}, auth=(cid, secret)
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "unsupported_grant_type"


def test_refresh_token_grant_mints_a_working_access_token(service: ServiceThread) -> None:
    cid, secret = service.create_client()
    refresh = _token(service, COMPUTE_SCOPE, auth=(cid, secret)).json()["refresh_token"]
    resp = httpx.post(
        f"{service.url}/v2/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh},
        auth=(cid, secret),
    )
    assert resp.status_code == 200, resp.text
    token = resp.json()["access_token"]
    listed = httpx.get(f"{service.url}/v2/endpoints", headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200


def test_userinfo_says_the_client_id_is_the_identity(service: ServiceThread) -> None:
    cid, secret = service.create_client()
    token = _token(service, AUTH_SCOPES, auth=(cid, secret)).json()["access_token"]
    resp = httpx.get(
        f"{service.url}/v2/oauth2/userinfo", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["sub"] == cid
    assert [i["sub"] for i in doc["identity_set"]] == [cid]


def test_introspect_and_revoke(service: ServiceThread) -> None:
    cid, secret = service.create_client()
    token = _token(service, COMPUTE_SCOPE, auth=(cid, secret)).json()["access_token"]
    url = f"{service.url}/v2/oauth2/token"
    doc = httpx.post(f"{url}/introspect", data={"token": token}, auth=(cid, secret)).json()
    assert doc["active"] is True
    assert doc["sub"] == cid
    assert doc["aud"] == ["funcx_service"]
    assert httpx.post(f"{url}/revoke", data={"token": token}, auth=(cid, secret)).status_code == 200
    doc = httpx.post(f"{url}/introspect", data={"token": token}, auth=(cid, secret)).json()
    assert doc == {"active": False}
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{service.url}/v2/endpoints", headers=headers).status_code == 401


def test_tokens_are_stored_hashed(service: ServiceThread) -> None:
    cid, secret = service.create_client()
    token = _token(service, COMPUTE_SCOPE, auth=(cid, secret)).json()["access_token"]
    raw = Path(service.settings.db_path).read_bytes()
    wal = Path(service.settings.db_path + "-wal")
    raw += wal.read_bytes() if wal.exists() else b""
    assert token.encode() not in raw
    assert secret.encode() not in raw


# --- 401 / 403 / 404 / 422 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic " + base64.b64encode(b"a:b").decode()},
    ],
    ids=["no-token", "unknown-token", "basic-auth"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/endpoints"),
        ("POST", "/v3/functions"),
        ("GET", f"/v2/tasks/{uuid.uuid4()}"),
        ("GET", "/v2/get_amqp_result_connection_url"),
        ("GET", "/v2/oauth2/userinfo"),
        ("POST", f"/v3/endpoints/{uuid.uuid4()}/submit"),
    ],
)
def test_every_route_but_version_needs_a_token_of_this_service(
    service: ServiceThread, headers: dict[str, str], method: str, path: str
) -> None:
    resp = httpx.request(method, f"{service.url}{path}", headers=headers, json={"x": 1})
    assert resp.status_code == 401
    body = resp.json()
    assert body["code"] == "UNAUTHORIZED"
    assert body["message"]
    # A GARE-shaped body would make the SDK start an interactive login.
    assert "authorization_parameters" not in body


def test_a_token_for_auth_is_not_a_token_for_compute(service: ServiceThread) -> None:
    cid, secret = service.create_client()
    token = _token(service, AUTH_SCOPES, auth=(cid, secret)).json()["access_token"]
    resp = httpx.get(f"{service.url}/v2/endpoints", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401


def test_version_needs_no_token(service: ServiceThread) -> None:
    doc = httpx.get(f"{service.url}/v2/version", params={"service": "all"}).json()
    assert {"min_sdk_version", "min_ep_version"} <= doc.keys()


def test_unknown_route_is_json_404(service: ServiceThread) -> None:
    resp = httpx.get(f"{service.url}/v2/no/such/route")
    assert resp.status_code == 404
    assert resp.json()["code"] == "NOT_FOUND"


def test_unknown_ids_are_404(alice: ApiClient) -> None:
    for path in (
        f"/v2/tasks/{uuid.uuid4()}",
        f"/v2/functions/{uuid.uuid4()}",
        f"/v2/endpoints/{uuid.uuid4()}",
        f"/v2/taskgroup/{uuid.uuid4()}",
    ):
        resp = alice.get(path)
        assert resp.status_code == 404, path
        assert resp.json()["code"] == "NOT_FOUND"
    resp = alice.submit(str(uuid.uuid4()), {})
    assert resp.status_code == 404


def test_bad_bodies_are_422_naming_the_field(alice: ApiClient) -> None:
    ep = alice.register_endpoint()["endpoint_id"]
    resp = alice.post(f"/v3/endpoints/{ep}/submit", json={"create_queue": True})
    assert resp.status_code == 422
    assert "tasks" in resp.json()["message"]
    resp = alice.post(f"/v3/endpoints/{ep}/submit", json={"tasks": {"not-a-uuid": ["x"]}})
    assert resp.status_code == 422
    assert "tasks" in resp.json()["message"]
    resp = alice.post("/v3/functions", json={"function_name": "f"})
    assert resp.status_code == 422
    assert "function_code" in resp.json()["message"]
    resp = alice.post("/v3/functions", content=b"{not json", headers={"Content-Type": "x"})
    assert resp.status_code == 422
    assert alice.get("/v2/tasks/not-a-uuid").status_code == 422


def test_submit_of_an_unknown_function_is_404_naming_it(alice: ApiClient) -> None:
    ep = alice.register_endpoint()["endpoint_id"]
    fid = str(uuid.uuid4())
    resp = alice.submit(ep, {fid: ["x"]})
    assert resp.status_code == 404
    assert fid in resp.json()["message"]


def test_another_identitys_endpoint_is_403(alice: ApiClient, bob: ApiClient) -> None:
    ep = alice.register_endpoint()["endpoint_id"]
    fid = bob.register_function()
    assert bob.get(f"/v2/endpoints/{ep}").status_code == 403
    assert bob.get(f"/v2/endpoints/{ep}/status").status_code == 403
    assert bob.delete(f"/v2/endpoints/{ep}").status_code == 403
    assert bob.post(f"/v3/endpoints/{ep}/lock").status_code == 403
    assert bob.put(f"/v3/endpoints/{ep}", json={"endpoint_name": "mine"}).status_code == 403
    resp = bob.submit(ep, {fid: ["x"]})
    assert resp.status_code == 403
    assert resp.json()["code"] == "FORBIDDEN"


def test_a_public_endpoint_takes_anyones_tasks_but_stays_its_owners(
    alice: ApiClient, bob: ApiClient
) -> None:
    ep = alice.register_endpoint(public=True)["endpoint_id"]
    fid = bob.register_function()
    assert bob.submit(ep, {fid: ["x"]}).status_code == 200
    assert bob.get(f"/v2/endpoints/{ep}").status_code == 403
    assert bob.delete(f"/v2/endpoints/{ep}").status_code == 403
    assert ep in [e["uuid"] for e in bob.get("/v2/endpoints", params={"role": "any"}).json()]
    assert ep not in [e["uuid"] for e in bob.get("/v2/endpoints").json()]


def test_another_identitys_private_function_is_403(alice: ApiClient, bob: ApiClient) -> None:
    ep = bob.register_endpoint()["endpoint_id"]
    private = alice.register_function()
    public = alice.register_function(public=True)
    assert bob.get(f"/v2/functions/{private}").status_code == 403
    assert bob.delete(f"/v2/functions/{public}").status_code == 403
    assert bob.submit(ep, {private: ["x"]}).status_code == 403
    assert bob.submit(ep, {public: ["x"]}).status_code == 200


def test_another_identitys_tasks_and_task_groups_are_403(alice: ApiClient, bob: ApiClient) -> None:
    ep = alice.register_endpoint()["endpoint_id"]
    fid = alice.register_function()
    reply = alice.submit(ep, {fid: ["x"]}).json()
    tid, tg = reply["tasks"][fid][0], reply["task_group_id"]
    assert bob.get(f"/v2/tasks/{tid}").status_code == 403
    assert bob.get(f"/v2/taskgroup/{tg}").status_code == 403
    assert bob.get("/v2/_bench/task_timings", params={"task_group_id": tg}).status_code == 403
    assert bob.post("/v2/batch_status", json={"task_ids": [tid]}).json()["results"] == {}
    # Reusing someone else's task group id is refused too.
    bob_ep = bob.register_endpoint()["endpoint_id"]
    bob_fn = bob.register_function()
    assert bob.submit(bob_ep, {bob_fn: ["x"]}, task_group_id=tg).status_code == 403


# --- endpoints ------------------------------------------------------------------------------


def _assert_queue_infos(doc: dict[str, Any], endpoint_id: str, service_url: str) -> None:
    """Every block names the endpoint's own broker account (never the service's) at the
    service's broker, and queues whose names only the service and the endpoint know."""
    assert doc["endpoint_id"] == endpoint_id
    url = doc["command_queue_info"]["connection_url"]
    mine, theirs = urlsplit(url), urlsplit(service_url)
    assert mine.username == f"ep.{endpoint_id}"
    assert mine.password and mine.password != theirs.password
    assert (mine.hostname, mine.port, mine.path) == (theirs.hostname, theirs.port, theirs.path)
    assert doc["command_queue_info"]["queue"].startswith(f"{endpoint_id}.commands.")
    assert set(doc["command_queue_info"]) == {"connection_url", "queue"}
    assert doc["task_queue_info"]["connection_url"] == url
    assert doc["task_queue_info"]["exchange"] == "tasks"
    assert doc["task_queue_info"]["queue"].startswith(f"{endpoint_id}.tasks.")
    for kind, exchange in (("result", "results"), ("heartbeat", "heartbeats")):
        assert doc[f"{kind}_queue_info"] == {
            "connection_url": url,
            "exchange": exchange,
            "queue": exchange,
            "queue_publish_kwargs": {
                "exchange": exchange,
                "routing_key": f"{endpoint_id}.{exchange}",
                "mandatory": True,
                "properties": {"delivery_mode": 2},
            },
        }


def test_post_registration_returns_a_new_id_and_every_queue_info(
    service: ServiceThread, alice: ApiClient
) -> None:
    doc = alice.register_endpoint()
    uuid.UUID(doc["endpoint_id"])
    _assert_queue_infos(doc, doc["endpoint_id"], service.settings.amqp_url)
    meta = alice.get(f"/v2/endpoints/{doc['endpoint_id']}").json()
    assert meta["endpoint_mode"] == "single_user"
    assert meta["owner"] == alice.identity


def test_put_registration_creates_then_updates_under_the_given_id(
    service: ServiceThread, alice: ApiClient
) -> None:
    ep = str(uuid.uuid4())
    # The official endpoint's body: no endpoint_mode, so it is a manager.
    body = {"endpoint_name": "myep", "multi_user": True, "metadata": {"hostname": "h"}}
    first = alice.put(f"/v3/endpoints/{ep}", json=body)
    assert first.status_code == 200, first.text
    _assert_queue_infos(first.json(), ep, service.settings.amqp_url)
    assert alice.get(f"/v2/endpoints/{ep}").json()["endpoint_mode"] == "manager"
    second = alice.put(f"/v3/endpoints/{ep}", json={**body, "display_name": "renamed"})
    assert second.status_code == 200
    assert alice.get(f"/v2/endpoints/{ep}").json()["display_name"] == "renamed"


def test_a_locked_endpoint_cannot_re_register(alice: ApiClient) -> None:
    ep = alice.register_endpoint()["endpoint_id"]
    assert alice.post(f"/v3/endpoints/{ep}/lock").status_code == 200
    resp = alice.put(f"/v3/endpoints/{ep}", json={"endpoint_name": "ep"})
    assert resp.status_code == 423
    assert resp.json()["code"] == "ENDPOINT_LOCKED"


def test_allowed_functions_are_enforced_at_submit(alice: ApiClient) -> None:
    allowed, other = alice.register_function(), alice.register_function()
    ep = alice.register_endpoint(allowed_functions=[allowed])["endpoint_id"]
    assert alice.get(f"/v3/endpoints/{ep}/allowed_functions").json()["functions"] == [allowed]
    assert alice.submit(ep, {allowed: ["x"]}).status_code == 200
    resp = alice.submit(ep, {other: ["x"]})
    assert resp.status_code == 403
    assert other in resp.json()["message"]


def test_delete_endpoint(alice: ApiClient) -> None:
    ep = alice.register_endpoint()["endpoint_id"]
    assert alice.get(f"/v2/endpoints/{ep}/status").json()["status"] == "offline"
    assert alice.delete(f"/v2/endpoints/{ep}").status_code == 200
    assert alice.get(f"/v2/endpoints/{ep}").status_code == 404


# --- functions ------------------------------------------------------------------------------


def test_function_round_trip_and_delete(alice: ApiClient) -> None:
    code = "12\n01\ngASVAA==\n"
    fid = alice.register_function(code, description="doc", meta={"python_version": "3.11"})
    doc = alice.get(f"/v2/functions/{fid}").json()
    assert doc["function_uuid"] == fid
    assert doc["function_code"] == code
    assert doc["description"] == "doc"
    assert alice.delete(f"/v2/functions/{fid}").status_code == 200
    assert alice.get(f"/v2/functions/{fid}").status_code == 404


def test_source_code_registration_is_framed_as_the_st_strategy(alice: ApiClient) -> None:
    source = "def hello():\n    return 'hi'\n"
    fid = alice.register_function(source, function_name="hello", serialized=False)
    code = alice.get(f"/v2/functions/{fid}").json()["function_code"]
    buffer = f"st\nhello:{source}"
    assert code == f"{len(buffer)}\n{buffer}"


def test_result_connection_url_hands_out_the_broker_and_prefix(
    service: ServiceThread, alice: ApiClient, bob: ApiClient
) -> None:
    """The client's own broker account (never the service's) at the service's broker, and a
    prefix of the service's that only this client's result queues carry."""
    route = "/v2/get_amqp_result_connection_url"
    doc = alice.get(route).json()
    assert set(doc) == {"connection_url", "queue_prefix"}
    mine, theirs = urlsplit(doc["connection_url"]), urlsplit(service.settings.amqp_url)
    assert mine.scheme == theirs.scheme
    assert mine.username == f"sdk.{alice.identity}"
    assert mine.password and mine.password != theirs.password
    assert (mine.hostname, mine.port, mine.path) == (theirs.hostname, theirs.port, theirs.path)
    prefix = doc["queue_prefix"]
    token = prefix.removeprefix(service.settings.queue_prefix)
    assert prefix.startswith(service.settings.queue_prefix)
    assert token.endswith(".") and len(token) > 1
    # Stable: every process of one client watches with the same account and prefix.
    assert alice.get(route).json() == doc
    # Another client gets another account and another prefix.
    other = bob.get(route).json()
    assert urlsplit(other["connection_url"]).username == f"sdk.{bob.identity}"
    assert other["connection_url"] != doc["connection_url"]
    assert other["queue_prefix"].startswith(service.settings.queue_prefix)
    assert other["queue_prefix"] != prefix
