"""Authentication policies: the policy API, registration with a policy, enforcement on submit.

One service (real RabbitMQ) for the module. Identities get usernames in chosen domains
(`create-client --username`), so the attack is real: a submitter of an excluded domain, or of
one outside the include list, is refused at submit with 403 before any task is stored.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack.testing import ApiClient, ServiceThread, fetch_token, service_settings
from webservice.broker import PrivateRabbit
from webservice.store import Store

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
PAYLOAD = "10\n01\ngASVAA==\n"
POLICIES = "/v2/api/policies"


@pytest.fixture(scope="module")
def service(
    rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceThread]:
    db = tmp_path_factory.mktemp("ws-policies") / "ws.db"
    with ServiceThread(service_settings(rabbit, db)) as svc:
        yield svc


def _identity(service: ServiceThread, username: str | None) -> ApiClient:
    store = Store.open(service.settings.db_path)
    try:
        cid, secret = store.credentials.create_client(username or "", username=username)
    finally:
        store.close()
    return ApiClient(service.url, cid, fetch_token(service.url, cid, secret))


@pytest.fixture(scope="module")
def alice(service: ServiceThread) -> Iterator[ApiClient]:
    with _identity(service, "alice@example.org") as api:
        yield api


@pytest.fixture(scope="module")
def bob(service: ServiceThread) -> Iterator[ApiClient]:
    # No username set: `<client_id>@clients.auth.globus.org`, as Globus Auth names clients.
    with _identity(service, None) as api:
        yield api


def _policy(api: ApiClient, **fields: Any) -> httpx.Response:
    body = {"display_name": "P", "description": "D", **fields}
    return api.post(POLICIES, json={"policy": body})


def _created(api: ApiClient, **fields: Any) -> dict[str, Any]:
    resp = _policy(api, **fields)
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()["policy"]
    return doc


def _tasks_stored(service: ServiceThread, endpoint_id: str) -> int:
    db = sqlite3.connect(f"file:{service.settings.db_path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT COUNT(*) FROM tasks WHERE endpoint_id=?", (endpoint_id,))
        return int(row.fetchone()[0])
    finally:
        db.close()


def test_create_read_update_delete(alice: ApiClient) -> None:
    project = str(uuid.uuid4())
    doc = _created(
        alice,
        project_id=project,
        domain_constraints_include=["example.org", "*.edu"],
        authentication_assurance_timeout=600,
    )
    pid = doc["id"]
    assert doc == {
        "id": pid,
        "project_id": project,
        "display_name": "P",
        "description": "D",
        "high_assurance": False,
        "authentication_assurance_timeout": 600,
        "required_mfa": False,
        "domain_constraints_include": ["example.org", "*.edu"],
        "domain_constraints_exclude": None,
    }
    assert alice.get(f"{POLICIES}/{pid}").json() == {"policy": doc}

    # A PUT changes only what it sends; null clears an optional field.
    resp = alice.put(
        f"{POLICIES}/{pid}",
        json={"policy": {"display_name": "Q", "authentication_assurance_timeout": None}},
    )
    assert resp.status_code == 200, resp.text
    updated = alice.get(f"{POLICIES}/{pid}").json()["policy"]
    assert updated == {**doc, "display_name": "Q", "authentication_assurance_timeout": None}

    assert alice.delete(f"{POLICIES}/{pid}").status_code == 200
    assert alice.get(f"{POLICIES}/{pid}").status_code == 404


def test_another_identity_cannot_see_change_delete_or_use_a_policy(
    alice: ApiClient, bob: ApiClient
) -> None:
    pid = _created(alice, domain_constraints_exclude=["evil.org"])["id"]
    for method, body in [
        ("GET", None),
        ("PUT", {"policy": {"display_name": "x"}}),
        ("DELETE", None),
    ]:
        resp = bob.request(method, f"{POLICIES}/{pid}", json=body)
        assert resp.status_code == 404, f"{method}: {resp.status_code} {resp.text}"
        assert resp.json()["code"] == "NOT_FOUND"
    assert alice.get(f"{POLICIES}/{pid}").json()["policy"]["display_name"] == "P"

    # Registering an endpoint under someone else's policy, or a made-up one, is refused.
    for policy in (pid, str(uuid.uuid4()), "not-a-uuid"):
        resp = bob.post(
            "/v3/endpoints",
            json={"endpoint_name": "e", "authentication_policy": policy},
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["code"] in {"INVALID_AUTHENTICATION_POLICY", "BAD_REQUEST"}
    # Its owner can; and the policy cannot be deleted while an endpoint names it.
    ep = alice.register_endpoint(authentication_policy=pid.upper())["endpoint_id"]
    assert alice.get(f"/v2/endpoints/{ep}").json()["authentication_policy"] == pid
    resp = alice.delete(f"{POLICIES}/{pid}")
    assert resp.status_code == 409 and ep in resp.json()["message"], resp.text


@pytest.mark.parametrize(
    ("fields", "status", "needle"),
    [
        ({"domain_constraints_include": ["a.org"] * 101}, 422, "at most 100"),
        ({"domain_constraints_exclude": ["ex ample.org"]}, 422, "pattern"),
        ({"domain_constraints_include": ["[a-z].org"]}, 422, "pattern"),
        ({"domain_constraints_include": ["a" * 254]}, 422, "at most 253"),
        ({"authentication_assurance_timeout": -1}, 422, "greater than or equal to 0"),
        ({"display_name": "n" * 129}, 422, "at most 128"),
        ({"description": "d" * 1025}, 422, "at most 1024"),
        ({"project_id": "nope"}, 422, "not a UUID"),
        ({"high_assurance": True}, 400, "audit log"),
        ({"required_mfa": True}, 400, "only be set on a high_assurance"),
        ({"display_name": None}, 400, "display_name and a description"),
    ],
    ids=[
        "101-domains",
        "space",
        "bracket",
        "long-domain",
        "negative-timeout",
        "long-name",
        "long-description",
        "project",
        "high-assurance",
        "mfa",
        "no-name",
    ],
)
def test_invalid_policies_are_refused_with_the_reason(
    alice: ApiClient, fields: dict[str, Any], status: int, needle: str
) -> None:
    resp = _policy(alice, **fields)
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["message"], resp.text


def test_an_update_cannot_make_a_policy_high_assurance(alice: ApiClient) -> None:
    pid = _created(alice)["id"]
    resp = alice.put(f"{POLICIES}/{pid}", json={"policy": {"high_assurance": True}})
    assert resp.status_code == 400 and "audit log" in resp.json()["message"]
    assert alice.get(f"{POLICIES}/{pid}").json()["policy"]["high_assurance"] is False


def test_submitters_outside_the_policy_are_refused_before_anything_is_stored(
    service: ServiceThread, alice: ApiClient, bob: ApiClient
) -> None:
    pid = _created(
        alice,
        domain_constraints_include=["example.org", "*.edu"],
        domain_constraints_exclude=["evil.edu"],
    )["id"]
    ep = alice.register_endpoint(public=True, authentication_policy=pid)["endpoint_id"]

    mallory = _identity(service, "mallory@Evil.EDU")
    eve = _identity(service, "eve@other.org")
    carol = _identity(service, "carol@uni.edu")
    refused = {"excluded domain": mallory, "outside the include list": eve, "a client": bob}
    for why, api in refused.items():
        fid = api.register_function()
        before = _tasks_stored(service, ep)
        group = str(uuid.uuid4())
        resp = api.submit(ep, {fid: [PAYLOAD]}, task_group_id=group)
        assert resp.status_code == 403, f"{why}: {resp.text}"
        body = resp.json()
        assert body["code"] == "AUTHENTICATION_POLICY_VIOLATION", body
        assert body["http_status_code"] == 403
        assert _tasks_stored(service, ep) == before, why
        assert api.get(f"/v2/taskgroup/{group}").status_code == 404, why

    for api in (alice, carol):
        fid = api.register_function()
        before = _tasks_stored(service, ep)
        resp = api.submit(ep, {fid: [PAYLOAD]})
        assert resp.status_code == 200, resp.text
        assert _tasks_stored(service, ep) == before + 1
    for api in (mallory, eve, carol):
        api.close()


def test_the_assurance_timeout_is_the_age_of_the_login(
    service: ServiceThread, alice: ApiClient
) -> None:
    fid = alice.register_function()
    strict = _created(alice, authentication_assurance_timeout=0)["id"]
    ep = alice.register_endpoint(authentication_policy=strict)["endpoint_id"]
    resp = alice.submit(ep, {fid: [PAYLOAD]})
    assert resp.status_code == 403 and "log in again" in resp.json()["message"], resp.text
    assert _tasks_stored(service, ep) == 0

    lenient = _created(alice, authentication_assurance_timeout=86400)["id"]
    ep = alice.register_endpoint(authentication_policy=lenient)["endpoint_id"]
    assert alice.submit(ep, {fid: [PAYLOAD]}).status_code == 200


def test_create_client_sets_the_username_userinfo_reports(
    service: ServiceThread, alice: ApiClient
) -> None:
    assert alice.get("/v2/oauth2/userinfo").json()["username"] == "alice@example.org"
    # `create-client` against the running service's database (after this process opened it
    # too: tests/unit/test_webservice_db_locks.py).
    cli = [str(BIN / "compute-webservice"), "create-client", "--db", service.settings.db_path]
    bad = subprocess.run([*cli, "--username", "no-domain"], capture_output=True, text=True)
    assert bad.returncode == 2 and "local@domain" in bad.stderr
    out = subprocess.run(
        [*cli, "--username", "dana@example.org"], capture_output=True, text=True, check=True
    )
    creds = json.loads(out.stdout)
    token = fetch_token(service.url, creds["client_id"], creds["client_secret"])
    resp = httpx.get(
        f"{service.url}/v2/oauth2/userinfo", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.json()["username"] == "dana@example.org"


def _configure(service: ServiceThread, user_dir: Path, cid: str, secret: str, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLOBUS_", "COMPUTE_"))}
    env.update(
        GLOBUS_COMPUTE_USER_DIR=str(user_dir),
        GLOBUS_SDK_ENVIRONMENT="local",
        GLOBUS_SDK_SERVICE_URL_AUTH=f"{service.url}/",
        GLOBUS_COMPUTE_CLIENT_ID=cid,
        GLOBUS_COMPUTE_CLIENT_SECRET=secret,
        COMPUTE_SERVICE_URL=service.url,
    )
    return subprocess.run(
        [str(BIN / "compute-endpoint"), "configure", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_configure_creates_the_policy_with_the_endpoint_credentials(
    service: ServiceThread, tmp_path: Path
) -> None:
    store = Store.open(service.settings.db_path)
    try:
        cid, secret = store.credentials.create_client("ep-admin")
    finally:
        store.close()
    user_dir = tmp_path / "gc"
    out = _configure(
        service, user_dir, cid, secret, "--allowed-domains", "example.org,*.edu", "pol-ep"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load((user_dir / "pol-ep" / "config.yaml").read_text())
    pid = config["authentication_policy"]
    assert f"Created authentication policy {pid}" in out.stdout
    with ApiClient(service.url, cid, fetch_token(service.url, cid, secret)) as owner:
        policy = owner.get(f"{POLICIES}/{pid}").json()["policy"]
    assert policy["domain_constraints_include"] == ["example.org", "*.edu"]
    assert policy["display_name"] == "Globus Compute Authentication Policy"

    # The service's refusal is shown and nothing is written.
    out = _configure(service, user_dir, cid, secret, "--excluded-domains", "bad domain", "p2")
    assert out.returncode != 0 and "pattern" in out.stderr, out.stdout + out.stderr
    assert not (user_dir / "p2").exists()
