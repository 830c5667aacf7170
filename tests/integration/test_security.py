"""Security properties (reliability.md "Security"): tokens, ownership, file modes, argv.

The route list comes from the app's router, so a route added later is covered (or must be
named in OPEN_ROUTES on purpose).
"""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from devstack.testing import ApiClient, ServiceThread, service_settings
from endpoint.containers.argv import launch_argv, launch_template
from endpoint.containers.spec import (
    LAUNCH_CMD_PLACEHOLDER,
    RUNTIMES,
    ContainerSpec,
    LaunchContext,
    container_spec,
)
from endpoint.errors import ConfigError
from webservice.api.oauth import AUTH_CODE_PAGE
from webservice.app import create_app
from webservice.broker import PrivateRabbit
from webservice.settings import Settings

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent

#: (method, path) reachable without a bearer token: the version check, and the OAuth2/OIDC
#: routes, which authenticate the client (or the person signing in) instead.
OPEN_ROUTES = {
    ("GET", "/v2/version"),
    ("POST", "/v2/oauth2/token"),
    ("POST", "/v2/oauth2/token/revoke"),
    ("POST", "/v2/oauth2/token/introspect"),
    ("GET", "/v2/oauth2/authorize"),
    ("POST", "/v2/oauth2/authorize"),
    ("GET", AUTH_CODE_PAGE),
    ("GET", "/.well-known/openid-configuration"),
    ("GET", "/jwk.json"),
    # The status page: a session cookie from its own sign-in form instead of a token
    # (tests/integration/test_status_page.py checks each of these without one).
    ("GET", "/status"),
    ("GET", "/status/login"),
    ("POST", "/status/login"),
    ("POST", "/status/logout"),
    ("GET", "/status/endpoints/{endpoint_id}"),
}


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # FastAPI >= 0.165 mounts an included router as one wrapper route.
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _api_routes(inner.routes)


def _all_routes() -> list[tuple[str, str]]:
    app = create_app(Settings(amqp_url="amqp://unused", db_path=":memory:"))
    found = sorted(
        (method, route.path) for route in _api_routes(app.routes) for method in route.methods or ()
    )
    # Cross-check the walk against the schema (routes hidden from it are still walked).
    documented = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert documented <= set(found), documented - set(found)
    return found


ROUTES = _all_routes()
GUARDED = [r for r in ROUTES if r not in OPEN_ROUTES]


@pytest.fixture(scope="module")
def service(
    rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceThread]:
    db = tmp_path_factory.mktemp("ws-sec") / "ws.db"
    with ServiceThread(service_settings(rabbit, db)) as svc:
        yield svc


@pytest.fixture(scope="module")
def alice(service: ServiceThread) -> Iterator[ApiClient]:
    with service.new_identity("alice") as api:
        yield api


@pytest.fixture(scope="module")
def bob(service: ServiceThread) -> Iterator[ApiClient]:
    with service.new_identity("bob") as api:
        yield api


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _m: str(uuid.uuid4()), path)


# --- (a) a token on every route -----------------------------------------------------------


def test_the_open_routes_all_exist() -> None:
    # A renamed open route must not leave a stale exemption behind.
    assert set(ROUTES) >= OPEN_ROUTES
    assert len(GUARDED) >= 15


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", "Bearer a b", "Basic dXNlcjpwYXNz", "bearer"],
    ids=["none", "wrong", "spaced", "basic", "scheme-only"],
)
def test_every_guarded_route_answers_401_without_a_valid_token(
    service: ServiceThread, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    failures = []
    with httpx.Client(base_url=service.url, headers=headers) as http:
        for method, path in GUARDED:
            # A body that would be valid or invalid: either way the token is checked first.
            resp = http.request(method, _concrete(path), json={})
            if resp.status_code != 401 or resp.json().get("code") != "UNAUTHORIZED":
                failures.append(f"{method} {path} -> {resp.status_code} {resp.text[:200]}")
    assert not failures, "\n".join(failures)


def test_a_token_for_another_resource_server_is_refused(service: ServiceThread) -> None:
    cid, secret = service.create_client()
    resp = httpx.post(
        f"{service.url}/v2/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "openid"},
        auth=(cid, secret),
    )
    token = resp.json()["access_token"]
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}) as http:
        resp = http.get("/v2/endpoints")
    assert resp.status_code == 401, resp.text


def test_the_version_check_needs_no_token(service: ServiceThread) -> None:
    assert httpx.get(f"{service.url}/v2/version").status_code == 200


# --- (b) owners -----------------------------------------------------------------------------


def _submit_one(api: ApiClient, endpoint_id: str, function_id: str) -> httpx.Response:
    return api.submit(endpoint_id, {function_id: ["10\n01\ngASVAA==\n"]})


def test_another_identity_gets_403_on_what_it_does_not_own(
    alice: ApiClient, bob: ApiClient
) -> None:
    ep = alice.register_endpoint()["endpoint_id"]
    fid = alice.register_function()
    resp = _submit_one(alice, ep, fid)
    assert resp.status_code == 200, resp.text
    tg = resp.json()["task_group_id"]
    task_id = resp.json()["tasks"][fid][0]
    bob_fid = bob.register_function()

    forbidden = [
        ("GET", f"/v2/endpoints/{ep}", None),
        ("GET", f"/v2/endpoints/{ep}/status", None),
        ("PUT", f"/v3/endpoints/{ep}", {"endpoint_name": "stolen"}),
        ("POST", f"/v3/endpoints/{ep}/lock", None),
        ("GET", f"/v3/endpoints/{ep}/allowed_functions", None),
        ("POST", f"/v3/endpoints/{ep}/submit", {"tasks": {bob_fid: ["x"]}}),
        ("DELETE", f"/v2/endpoints/{ep}", None),
        ("DELETE", f"/v2/functions/{fid}", None),
        ("GET", f"/v2/functions/{fid}", None),
        ("GET", f"/v2/tasks/{task_id}", None),
        ("GET", f"/v2/taskgroup/{tg}", None),
        ("GET", f"/v2/_bench/task_timings?task_group_id={tg}", None),
    ]
    failures = []
    for method, path, body in forbidden:
        got = bob.request(method, path, json=body)
        if got.status_code != 403 or got.json().get("code") != "FORBIDDEN":
            failures.append(f"{method} {path} -> {got.status_code} {got.text[:200]}")
    assert not failures, "\n".join(failures)

    # Alice's task and function are still hers; a batch status leaves foreign ids out.
    assert alice.get(f"/v2/tasks/{task_id}").status_code == 200
    assert alice.get(f"/v2/functions/{fid}").status_code == 200
    batch = bob.post("/v2/batch_status", json={"task_ids": [task_id]}).json()
    assert batch["results"] == {}
    assert ep not in {e["uuid"] for e in bob.get("/v2/endpoints?role=any").json()}


def test_a_public_endpoint_takes_tasks_from_anyone_but_only_its_owner_manages_it(
    alice: ApiClient, bob: ApiClient
) -> None:
    ep = alice.register_endpoint(public=True)["endpoint_id"]
    bob_fid = bob.register_function()
    resp = _submit_one(bob, ep, bob_fid)
    assert resp.status_code == 200, resp.text
    assert bob.get(f"/v3/endpoints/{ep}/allowed_functions").status_code == 200
    for method, path in [("POST", f"/v3/endpoints/{ep}/lock"), ("DELETE", f"/v2/endpoints/{ep}")]:
        assert bob.request(method, path).status_code == 403
    # Bob's task is bob's, not the endpoint owner's.
    task_id = resp.json()["tasks"][bob_fid][0]
    assert alice.get(f"/v2/tasks/{task_id}").status_code == 403
    assert bob.get(f"/v2/tasks/{task_id}").status_code == 200


def test_a_private_function_cannot_be_run_by_another_identity(
    alice: ApiClient, bob: ApiClient
) -> None:
    fid = alice.register_function()
    bob_ep = bob.register_endpoint()["endpoint_id"]
    resp = _submit_one(bob, bob_ep, fid)
    assert resp.status_code == 403, resp.text


# --- (c) tokens hashed ----------------------------------------------------------------------


def test_tokens_and_secrets_are_stored_only_as_hashes(service: ServiceThread) -> None:
    cid, secret = service.create_client("hashed")
    resp = httpx.post(
        f"{service.url}/v2/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "openid"},
        auth=(cid, secret),
    )
    assert resp.status_code == 200
    token = resp.json()["access_token"]
    with ApiClient(service.url, cid, token) as api:
        assert api.get("/v2/oauth2/userinfo").status_code == 200
    db = Path(service.settings.db_path)
    # What SQLite sees (WAL included), then the raw bytes of every file it keeps.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        dump = "\n".join(repr(row) for t in tables for row in conn.execute(f"SELECT * FROM {t}"))
    finally:
        conn.close()
    assert cid in dump  # the dump did read the credentials
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    for value in (token, secret):
        assert value not in dump
        assert value.encode() not in raw


# --- (d) file modes -------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_service_database_is_private(service: ServiceThread) -> None:
    db = Path(service.settings.db_path)
    files = list(db.parent.glob(db.name + "*"))
    assert db in files
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_the_service_database_is_private_under_a_loose_umask(tmp_path: Path) -> None:
    db = tmp_path / "loose.db"
    db.touch(mode=0o644)
    os.chmod(db, 0o644)  # as an earlier version left it
    out = subprocess.run(
        [BIN / "compute-webservice", "create-client", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert _mode(db) == 0o600


def _cli_env(user_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLOBUS_", "COMPUTE_"))}
    return {**env, "GLOBUS_COMPUTE_USER_DIR": str(user_dir), **extra}


def test_configure_makes_a_private_endpoint_directory(tmp_path: Path) -> None:
    user_dir = tmp_path / "gc"
    out = subprocess.run(
        [BIN / "compute-endpoint", "configure", "sec-ep"],
        env=_cli_env(user_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    ep_dir = user_dir / "sec-ep"
    assert _mode(ep_dir) == 0o700
    assert _mode(ep_dir / "config.yaml") == 0o600


def test_a_logged_in_endpoint_keeps_its_tokens_private(
    service: ServiceThread, tmp_path: Path
) -> None:
    cid, secret = service.create_client("ep-login")
    user_dir = tmp_path / "gc"
    env = _cli_env(
        user_dir,
        GLOBUS_SDK_ENVIRONMENT="local",
        GLOBUS_SDK_SERVICE_URL_AUTH=f"{service.url}/",
        GLOBUS_COMPUTE_CLIENT_ID=cid,
        GLOBUS_COMPUTE_CLIENT_SECRET=secret,
        COMPUTE_SERVICE_URL=service.url,
    )
    out = subprocess.run(
        [BIN / "compute-endpoint", "login"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    storage = user_dir / "storage.db"
    assert storage.exists()
    assert _mode(user_dir) == 0o700
    assert _mode(storage) == 0o600


# --- (e) container argv -------------------------------------------------------------------

HOSTILE = ["img; rm -rf /", "$(touch x)", "`touch x`", "--privileged", "-v/:/host", "a\nb", ""]
CTX = LaunchContext(run_dir="/tmp/ep dir", user="1000:1000")
COMMAND = ["process_worker_pool.py", "--arg", "x y"]


def _spec(runtime: str, image: str | None = "img", options: str | None = None) -> ContainerSpec:
    if runtime == "custom":
        options = f"{options or ''} run {LAUNCH_CMD_PLACEHOLDER}"
        image = None
    spec = container_spec(runtime, image, options)
    assert spec is not None
    return spec


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_launch_command_is_an_argv_list(runtime: str) -> None:
    argv = launch_argv(_spec(runtime), CTX, COMMAND)
    assert isinstance(argv, list)
    assert all(isinstance(word, str) for word in argv)
    assert argv[-3:] == COMMAND
    assert "sh" not in argv[:1] and "-c" not in argv


@pytest.mark.parametrize("image", HOSTILE)
@pytest.mark.parametrize("runtime", [r for r in RUNTIMES if r != "custom"])
def test_a_hostile_image_is_refused_or_stays_one_image_word(runtime: str, image: str) -> None:
    try:
        spec = _spec(runtime, image=image)
    except ConfigError:
        spec = None
    if spec is None:
        # Built by hand, bypassing container_spec(): the builder refuses it all the same.
        by_hand = ContainerSpec(runtime, image)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            launch_argv(by_hand, CTX, COMMAND)
        return
    argv = launch_argv(spec, CTX, COMMAND)
    assert not image.startswith("-")
    assert argv[-len(COMMAND) - 1] == image
    assert argv.count(image) == 1
    # The Parsl line, split as the job script's shell would, gives back the same words.
    assert shlex.split(launch_template(spec, CTX, "worker {port}").format(port=1)) == [
        *argv[: -len(COMMAND)],
        "worker",
        "1",
    ]


@pytest.mark.parametrize("image", HOSTILE)
def test_with_image_refuses_a_hostile_submitted_image(image: str) -> None:
    spec = _spec("docker")
    if image.startswith("-") or not image or any(c.isspace() for c in image):
        with pytest.raises(ConfigError):
            spec.with_image(image)
    else:
        assert launch_argv(spec.with_image(image), CTX, COMMAND)[-len(COMMAND) - 1] == image


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_quoted_option_stays_one_argv_element(runtime: str) -> None:
    value = "A=$(touch x); rm -rf / `id` --privileged"
    spec = _spec(runtime, options=f"-e {shlex.quote(value)}")
    argv = launch_argv(spec, CTX, COMMAND)
    assert argv.count(value) == 1
    assert argv[argv.index(value) - 1] == "-e"
    # Nothing in the value became a word of its own.
    assert "--privileged" not in argv and "rm" not in argv
    line = launch_template(spec, CTX, "worker {port}").format(port=1)
    assert value in shlex.split(line)


def test_custom_quotes_the_command_inside_a_word() -> None:
    spec = container_spec("custom", None, f'sh -c "cd /x && {LAUNCH_CMD_PLACEHOLDER}"')
    assert spec is not None
    hostile = ["worker", "$(touch x); rm -rf /"]
    argv = launch_argv(spec, CTX, hostile)
    assert argv[:2] == ["sh", "-c"]
    # The shell the user asked for sees the command as quoted words, not as code.
    assert shlex.split(argv[2]) == ["cd", "/x", "&&", *hostile]
