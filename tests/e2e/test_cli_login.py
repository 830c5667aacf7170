"""`login` / `whoami` / `logout` through globus-sdk's command-line authorization-code flow,
driven like a person would (read the URL, sign in on the page, paste the code), and the
security properties of the service's authorization-code grant."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import subprocess
import urllib.parse
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from devstack.stack import Stack, _bin
from tests.e2e.test_cli_lifecycle import listed, run_cli

PUBLIC_APP = "4cf29807-cf21-49ec-9443-ff9a3fb9f81c"
COMPUTE_SCOPE = "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all"


def user_env(stack: Stack, user_dir: Path) -> dict[str, str]:
    """The stack's environment without client credentials: a person, not a service account."""
    env = stack.client_env(user_dir)
    del env["GLOBUS_COMPUTE_CLIENT_ID"], env["GLOBUS_COMPUTE_CLIENT_SECRET"]
    return env


def sign_in(stack: Stack, authorize_url: str, secret: str | None = None) -> httpx.Response:
    """What the person does in the browser: open the URL, sign in as the owner, Allow."""
    page = httpx.get(authorize_url, timeout=10)
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    query = re.search(r"name='authorize_query' value='([^']*)'", page.text)
    assert query is not None
    form = {
        "authorize_query": html.unescape(query.group(1)),
        "owner_client_id": stack.client_id,
        "owner_secret": stack.client_secret if secret is None else secret,
    }
    return httpx.post(f"{stack.url}/v2/oauth2/authorize", data=form, timeout=10)


def code_from(stack: Stack, redirect: httpx.Response) -> str:
    assert redirect.status_code == 303, redirect.text
    shown = httpx.get(redirect.headers["location"], timeout=10)
    found = re.search(r"id='auth-code'>([^<]+)<", shown.text)
    assert found is not None, shown.text
    return found.group(1)


def login(stack: Stack, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [_bin("compute-endpoint"), "login", *flags],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = ""
    for line in proc.stdout:
        if line.startswith("http"):
            url = line.strip()
            break
    assert url.startswith(f"{stack.url}/v2/oauth2/authorize?"), url
    code = code_from(stack, sign_in(stack, url))
    out, err = proc.communicate(code + "\n", timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_login_whoami_start_and_logout_as_a_person(stack: Stack, tmp_path: Path) -> None:
    user = tmp_path / "person"
    env = user_env(stack, user)
    not_yet = run_cli(env, "whoami")
    assert not_yet.returncode == 77 and "not logged in" in not_yet.stderr

    done = login(stack, env)
    assert done.returncode == 0, done.stderr
    assert "Logged in" in done.stdout
    assert oct((user / "storage.db").stat().st_mode & 0o777) == "0o600"
    assert "Already logged in" in run_cli(env, "login").stdout

    who = run_cli(env, "whoami", "--linked-identities")
    assert who.returncode == 0, who.stderr
    assert who.stdout.splitlines()[0] == f"{stack.client_id}@clients.auth.globus.org"
    assert f"({stack.client_id})" in who.stdout

    # The login is good for the Compute API: an endpoint registers under the owner's identity.
    assert run_cli(env, "configure", "mine").returncode == 0
    (user / "mine" / "config.yaml").write_text("engine:\n  type: ThreadPoolEngine\n")
    started = run_cli(env, "start", "--detach", "mine")
    assert started.returncode == 0, started.stderr
    endpoint_id = json.loads((user / "mine" / "endpoint.json").read_text())["endpoint_id"]
    assert stack.get(f"/v2/endpoints/{endpoint_id}")["endpoint_id"] == endpoint_id

    refused = run_cli(env, "logout")
    assert refused.returncode == 1 and "mine" in refused.stderr
    assert run_cli(env, "stop", "mine").returncode == 0
    assert listed(env) == {"mine": "Stopped"}
    out = run_cli(env, "logout")
    assert out.returncode == 0, out.stderr
    assert not (user / "storage.db").exists()
    assert run_cli(env, "whoami").returncode == 77


def test_a_client_login_validates_the_credentials(stack: Stack, tmp_path: Path) -> None:
    env = stack.client_env(tmp_path / "svc")
    done = run_cli(env, "login")
    assert done.returncode == 0 and "client credentials" in done.stdout
    who = run_cli(env, "whoami")
    assert who.stdout.strip() == f"{stack.client_id}@clients.auth.globus.org"
    bad = {**env, "GLOBUS_COMPUTE_CLIENT_SECRET": "wrong", "GLOBUS_COMPUTE_USER_DIR": str(tmp_path)}
    refused = run_cli(bad, "login", "--force")
    assert refused.returncode == 77, refused.stderr


def test_login_without_a_terminal_fails_clearly(stack: Stack, tmp_path: Path) -> None:
    env = user_env(stack, tmp_path / "nobody")
    done = run_cli(env, "login", input="")
    assert done.returncode == 77 and "EOF" in done.stderr


# ---- the authorization-code grant itself -----------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_url(stack: Stack, challenge: str, **overrides: str) -> str:
    params = {
        "client_id": PUBLIC_APP,
        "redirect_uri": f"{stack.url}/v2/web/auth-code",
        "scope": f"openid {COMPUTE_SCOPE}",
        "state": "xyz",
        "response_type": "code",
        "access_type": "offline",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **overrides,
    }
    return f"{stack.url}/v2/oauth2/authorize?{urllib.parse.urlencode(params)}"


def exchange(stack: Stack, code: str, verifier: str, **overrides: str) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "client_id": PUBLIC_APP,
        "redirect_uri": f"{stack.url}/v2/web/auth-code",
        **overrides,
    }
    return httpx.post(f"{stack.url}/v2/oauth2/token", data=form, timeout=10)


def test_a_code_works_once_and_yields_a_verifiable_id_token(stack: Stack) -> None:
    verifier, challenge = pkce()
    code = code_from(stack, sign_in(stack, authorize_url(stack, challenge)))
    first = exchange(stack, code, verifier)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["refresh_token"] and {t["resource_server"] for t in body["other_tokens"]}
    jwks = httpx.get(f"{stack.url}/jwk.json").json()["keys"][0]
    key = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwks))
    assert isinstance(key, RSAPublicKey)  # a JWKS publishes public keys only
    claims = jwt.decode(body["id_token"], key=key, algorithms=["RS256"], audience=PUBLIC_APP)
    assert claims["sub"] == stack.client_id
    again = exchange(stack, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "tamper",
    [
        {"code_verifier": "x" * 50},
        {"client_id": "0c8b2a8e-51a3-4a52-8a8c-2b7f2f6f6a11"},
        {"redirect_uri": "http://127.0.0.1:9/elsewhere"},
    ],
    ids=["wrong-verifier", "other-client", "other-redirect"],
)
def test_a_code_is_bound_to_its_verifier_client_and_redirect(
    stack: Stack, tamper: dict[str, str]
) -> None:
    verifier, challenge = pkce()
    code = code_from(stack, sign_in(stack, authorize_url(stack, challenge)))
    bad = exchange(stack, code, verifier, **tamper)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    # A failed attempt burns the code: no second guess.
    assert exchange(stack, code, verifier).status_code == 400


def test_a_wrong_owner_secret_gets_no_code(stack: Stack) -> None:
    _, challenge = pkce()
    denied = sign_in(stack, authorize_url(stack, challenge), secret="not-the-secret")
    assert denied.status_code == 401 and "location" not in denied.headers
    assert "wrong secret" in denied.text


@pytest.mark.parametrize(
    "overrides",
    [
        {"code_challenge_method": "plain"},
        {"code_challenge": ""},
        {"redirect_uri": "https://attacker.example/steal"},
        {"response_type": "token"},
        {"scope": "not-a-scope"},
        {"client_id": "not-a-uuid"},
    ],
    ids=["plain-pkce", "no-pkce", "foreign-redirect", "implicit", "bad-scope", "bad-client"],
)
def test_unsafe_authorization_requests_are_refused(stack: Stack, overrides: dict[str, str]) -> None:
    _, challenge = pkce()
    resp = httpx.get(authorize_url(stack, challenge, **overrides), timeout=10)
    assert resp.status_code == 400
    assert "location" not in resp.headers
