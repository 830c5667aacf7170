"""The Globus Auth routes the official SDK and endpoint use (protocol.md §7).

Token routes authenticate the *client* (HTTP Basic, or form client_id/client_secret), as OAuth2
requires; userinfo takes a bearer token like every other route.

Besides client credentials and refresh tokens, a user login works the way globus-sdk's
command-line flow expects (authorization code with PKCE, RFC 7636, and an OpenID id_token):

* `GET /v2/oauth2/authorize` shows a sign-in page. This local service has a single owner, whose
  identity is a client created with `compute-webservice create-client`: the person signs in
  with that client's id and secret, and the requesting application (a public "native" client,
  identified only by its id) receives tokens for that identity.
* The code is random (256 bits), kept only as a hash, in memory, for AUTH_CODE_TTL_S, usable
  once, and bound to the requesting client id, its redirect URI, the scopes and the S256 PKCE
  challenge; redirect URIs must be loopback or this service's own code page.
* `GET /v2/web/auth-code` is that page: it shows the code for the person to paste.
* id_tokens are RS256-signed with a key made at start (`/.well-known/openid-configuration`,
  `/jwk.json`); they are only checked by clients while exchanging the code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import ipaddress
import re
import secrets
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from webservice.context import Services, get_services
from webservice.errors import OAuthError
from webservice.scopes import group_by_resource_server
from webservice.security import AuthCallerDep, Caller, client_credentials
from webservice.store.credentials import (
    ACCESS,
    REFRESH,
    Client,
    TokenRecord,
    identity_username,
    token_hash,
)
from webservice.throttle import AuthThrottle

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _throttle(request: Request) -> AuthThrottle:
    throttle: AuthThrottle = request.app.state.auth_throttle
    return throttle


def _verify(services: Services, request: Request, client_id: str, secret: str) -> Client | None:
    """The client if the secret is right; throttled per client id (429 while it must wait)."""
    throttle = _throttle(request)
    throttle.check(client_id)
    client = services.store.credentials.verify_client(client_id, secret)
    if client is None:
        throttle.failed(client_id)
    else:
        throttle.succeeded(client_id)
    return client


def _authenticate(services: Services, request: Request, form: dict[str, str]) -> Client | None:
    """The authenticated client, None when the request carries no client credentials."""
    creds = client_credentials(request, form)
    if creds is None:
        return None
    client = _verify(services, request, *creds)
    if client is None:
        raise OAuthError("invalid_client", "unknown client or wrong secret", 401)
    return client


def _token_doc(token: str, rec: TokenRecord, refresh_token: str | None) -> dict[str, Any]:
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": max(0, int(rec.expires_at - time.time())),
        "resource_server": rec.resource_server,
        "scope": " ".join(rec.scopes),
        "refresh_token": refresh_token,
    }


def _bundle(docs: list[dict[str, Any]]) -> dict[str, Any]:
    # Globus Auth's shape: the first resource server's token at top level, the rest beside it.
    return {**docs[0], "other_tokens": docs[1:]}


@router.post("/v2/oauth2/token")
async def token(request: Request, services: ServicesDep) -> dict[str, Any]:
    form = await _form(request)
    grant = form.get("grant_type")
    if grant == "client_credentials":
        return _client_credentials_grant(services, request, form)
    if grant == "refresh_token":
        return _refresh_grant(services, request, form)
    if grant == "authorization_code":
        return _authorization_code_grant(services, request, form)
    raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported")


def _client_credentials_grant(
    services: Services, request: Request, form: dict[str, str]
) -> dict[str, Any]:
    client = _authenticate(services, request, form)
    if client is None:
        raise OAuthError("invalid_client", "client authentication is required", 401)
    grouped = group_by_resource_server(form.get("scope", ""))
    creds, settings = services.store.credentials, services.settings
    docs = []
    for rs, scopes in grouped.items():
        refresh, _ = creds.issue(
            REFRESH, client.client_id, rs, scopes, settings.refresh_token_ttl_s
        )
        access, rec = creds.issue(
            ACCESS,
            client.client_id,
            rs,
            scopes,
            settings.access_token_ttl_s,
            refresh_hash=token_hash(refresh),
        )
        docs.append(_token_doc(access, rec, refresh))
    return _bundle(docs)


def _refresh_grant(services: Services, request: Request, form: dict[str, str]) -> dict[str, Any]:
    creds, settings = services.store.credentials, services.settings
    refresh = form.get("refresh_token", "")
    rec = creds.lookup(refresh, kind=REFRESH)
    if rec is None:
        raise OAuthError("invalid_grant", "the refresh token is unknown, expired or revoked")
    client = _authenticate(services, request, form)
    claimed = client.client_id if client else form.get("client_id")
    # A claim to be *another registered client* is refused. An unregistered (public, native)
    # client id proves nothing either way: for a user login the refresh token itself is the
    # credential, as for any public client (RFC 6749 §10.4).
    known = claimed is not None and services.store.credentials.get_client(claimed) is not None
    if claimed is not None and claimed != rec.client_id and (client is not None or known):
        raise OAuthError("invalid_grant", "the refresh token was issued to another client")
    access, new = creds.issue(
        ACCESS,
        rec.client_id,
        rec.resource_server,
        list(rec.scopes),
        settings.access_token_ttl_s,
        refresh_hash=token_hash(refresh),
    )
    return _bundle([_token_doc(access, new, refresh)])


def _userinfo_doc(caller: Caller) -> dict[str, Any]:
    identity = {
        "sub": caller.identity,
        "username": caller.username,
        "name": caller.client.name,
        "email": None,
        "identity_provider": "compute-webservice",
        "identity_provider_display_name": "Local Compute web service",
        "organization": None,
        "status": "used",
    }
    return {
        **identity,
        "preferred_username": caller.username,
        "last_authentication": None,
        "identity_set": [identity],
    }


@router.get("/v2/oauth2/userinfo")
async def userinfo(caller: AuthCallerDep) -> dict[str, Any]:
    return _userinfo_doc(caller)


@router.post("/v2/oauth2/userinfo")
async def userinfo_post(caller: AuthCallerDep) -> dict[str, Any]:
    return _userinfo_doc(caller)


@router.post("/v2/oauth2/token/revoke")
async def revoke(request: Request, services: ServicesDep) -> dict[str, Any]:
    form = await _form(request)
    client = _authenticate(services, request, form)
    token_value = form.get("token")
    if not token_value:
        raise OAuthError("invalid_request", "the 'token' parameter is required")
    # RFC 7009: the answer is the same whether or not the token existed.
    services.store.credentials.revoke(token_value, client.client_id if client else None)
    return {"active": False}


@router.post("/v2/oauth2/token/introspect")
async def introspect(request: Request, services: ServicesDep) -> dict[str, Any]:
    form = await _form(request)
    if _authenticate(services, request, form) is None:
        raise OAuthError("invalid_client", "client authentication is required", 401)
    token_value = form.get("token", "")
    creds = services.store.credentials
    rec = creds.lookup(token_value) or creds.lookup(token_value, kind=REFRESH)
    client = creds.get_client(rec.client_id) if rec else None
    if rec is None or client is None:
        return {"active": False}
    return {
        "active": True,
        "token_type": "Bearer" if rec.kind == ACCESS else "refresh_token",
        "scope": " ".join(rec.scopes),
        "client_id": rec.client_id,
        "sub": client.client_id,
        "username": client.username,
        "name": client.name,
        "aud": [rec.resource_server],
        "iat": int(rec.issued_at),
        "exp": int(rec.expires_at),
        "identity_set": [client.client_id],
    }


# ---- user login: authorization code with PKCE ---------------------------------------------

#: RFC 6749 recommends at most ten minutes; a person only has to copy and paste it.
AUTH_CODE_TTL_S = 300
ID_TOKEN_TTL_S = 3600
#: A failed sign-in answers slowly, to make guessing a chosen secret expensive.
FAILED_SIGN_IN_DELAY_S = 1.0
AUTH_CODE_PAGE = "/v2/web/auth-code"
_PKCE_TEXT = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")  # RFC 7636 §4.1
_NO_STORE = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
}


@dataclass(frozen=True)
class _Grant:
    """What a code stands for; it is redeemed at most once, before `expires_at`."""

    identity: str
    client_id: str
    redirect_uri: str
    scope: str
    challenge: str
    offline: bool
    nonce: str | None
    expires_at: float


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class _AuthState:
    """Per service process: outstanding codes (by hash) and the id_token signing key."""

    codes: dict[str, _Grant] = field(default_factory=dict)
    key: rsa.RSAPrivateKey = field(default_factory=_new_key)
    kid: str = field(default_factory=lambda: secrets.token_hex(8))

    def _purge(self) -> None:
        now = time.time()
        for digest in [d for d, g in self.codes.items() if g.expires_at <= now]:
            del self.codes[digest]

    def issue(self, grant: _Grant) -> str:
        self._purge()
        code = secrets.token_urlsafe(32)
        self.codes[token_hash(code)] = grant
        return code

    def redeem(self, code: str) -> _Grant | None:
        self._purge()
        return self.codes.pop(token_hash(code), None) if code else None


def _auth_state(request: Request) -> _AuthState:
    state: _AuthState | None = getattr(request.app.state, "oauth_auth_state", None)
    if state is None:
        state = _AuthState()
        request.app.state.oauth_auth_state = state
    return state


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redirect_allowed(uri: str, request: Request) -> bool:
    """Loopback URIs (RFC 8252 §7.3) and this service's own code page; nothing else."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.fragment or not parts.hostname:
        return False
    if _is_loopback(parts.hostname):
        return True
    return parts.netloc == request.url.netloc and parts.path == AUTH_CODE_PAGE


@dataclass(frozen=True)
class _AuthRequest:
    client_id: str
    redirect_uri: str
    scope: str
    state: str
    challenge: str
    offline: bool
    nonce: str | None
    app_name: str

    @classmethod
    def parse(cls, params: dict[str, str], request: Request) -> _AuthRequest:
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "only response_type=code is supported")
        client_id = params.get("client_id", "")
        try:
            client_id = str(uuid.UUID(client_id))
        except ValueError:
            raise OAuthError("invalid_request", "client_id must be a client UUID") from None
        redirect_uri = params.get("redirect_uri", "")
        if not _redirect_allowed(redirect_uri, request):
            raise OAuthError(
                "invalid_request",
                f"redirect_uri must be a loopback URI or {AUTH_CODE_PAGE} of this service",
            )
        scope = params.get("scope", "")
        group_by_resource_server(scope)  # raises invalid_scope
        challenge = params.get("code_challenge", "")
        if params.get("code_challenge_method") != "S256" or not _PKCE_TEXT.match(challenge):
            raise OAuthError("invalid_request", "PKCE is required: code_challenge_method=S256")
        return cls(
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=scope,
            state=params.get("state", ""),
            challenge=challenge,
            offline=params.get("access_type") == "offline",
            nonce=params.get("nonce") or None,
            app_name=params.get("prefill_named_grant") or client_id,
        )


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}"
        "label{display:block;margin:.6em 0}code{font-size:1.2em}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers=_NO_STORE)


def _sign_in_page(req: _AuthRequest, query: str, error: str | None, status: int = 200) -> Response:
    scopes = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in req.scope.split())
    problem = f"<p role='alert'><b>{html.escape(error)}</b></p>" if error else ""
    body = (
        f"<p><b>{html.escape(req.app_name)}</b> (client {html.escape(req.client_id)}) asks to"
        f" act as you with these scopes:</p><ul>{scopes}</ul>"
        "<p>This local service has one owner. Sign in with the client id and secret that"
        " <code>compute-webservice create-client</code> printed for you.</p>"
        f"{problem}<form method='post' action='/v2/oauth2/authorize'>"
        f"<input type='hidden' name='authorize_query' value='{html.escape(query, quote=True)}'>"
        "<label>Client id <input name='owner_client_id' autocomplete='username' required>"
        "</label><label>Client secret <input type='password' name='owner_secret'"
        " autocomplete='current-password' required></label>"
        "<button type='submit'>Allow</button></form>"
    )
    return _page("Sign in to the local Compute web service", body, status)


@router.get("/v2/oauth2/authorize")
async def authorize_page(request: Request) -> Response:
    params = dict(request.query_params)
    req = _AuthRequest.parse(params, request)
    return _sign_in_page(req, urllib.parse.urlencode(params), None)


@router.post("/v2/oauth2/authorize")
async def authorize(request: Request, services: ServicesDep) -> Response:
    form = await _form(request)
    query = form.get("authorize_query", "")
    # Everything is parsed again: the hidden field is as untrusted as the original URL.
    req = _AuthRequest.parse(dict(urllib.parse.parse_qsl(query, keep_blank_values=True)), request)
    owner = _verify(
        services, request, form.get("owner_client_id", "").strip(), form.get("owner_secret", "")
    )
    if owner is None:
        await asyncio.sleep(FAILED_SIGN_IN_DELAY_S)
        return _sign_in_page(req, query, "Unknown client id or wrong secret.", 401)
    grant = _Grant(
        identity=owner.client_id,
        client_id=req.client_id,
        redirect_uri=req.redirect_uri,
        scope=req.scope,
        challenge=req.challenge,
        offline=req.offline,
        nonce=req.nonce,
        expires_at=time.time() + AUTH_CODE_TTL_S,
    )
    code = _auth_state(request).issue(grant)
    sep = "&" if urllib.parse.urlsplit(req.redirect_uri).query else "?"
    target = req.redirect_uri + sep + urllib.parse.urlencode({"code": code, "state": req.state})
    return RedirectResponse(target, status_code=303, headers=_NO_STORE)


@router.get(AUTH_CODE_PAGE)
async def auth_code_page(request: Request) -> Response:
    code = request.query_params.get("code", "")
    if not code:
        return _page("No authorization code", "<p>Start the login again.</p>", 400)
    body = (
        "<p>Paste this code where the application asks for it (it works once, for"
        f" {AUTH_CODE_TTL_S // 60} minutes):</p>"
        f"<p><code id='auth-code'>{html.escape(code)}</code></p>"
    )
    return _page("Authorization code", body)


def _pkce_ok(verifier: str, challenge: str) -> bool:
    if not _PKCE_TEXT.match(verifier):
        return False
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return hmac.compare_digest(computed, challenge)


def _authorization_code_grant(
    services: Services, request: Request, form: dict[str, str]
) -> dict[str, Any]:
    grant = _auth_state(request).redeem(form.get("code", ""))
    if grant is None:
        raise OAuthError("invalid_grant", "the code is unknown, expired or already used")
    client = _authenticate(services, request, form)
    claimed = client.client_id if client else form.get("client_id")
    if claimed != grant.client_id:
        raise OAuthError("invalid_grant", "the code was issued to another client")
    if form.get("redirect_uri") != grant.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request")
    if not _pkce_ok(form.get("code_verifier", ""), grant.challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
    creds, settings = services.store.credentials, services.settings
    docs = []
    for rs, scopes in group_by_resource_server(grant.scope).items():
        refresh = None
        if grant.offline:
            refresh, _ = creds.issue(
                REFRESH, grant.identity, rs, scopes, settings.refresh_token_ttl_s
            )
        access, rec = creds.issue(
            ACCESS,
            grant.identity,
            rs,
            scopes,
            settings.access_token_ttl_s,
            refresh_hash=token_hash(refresh) if refresh else None,
        )
        docs.append(_token_doc(access, rec, refresh))
    bundle = _bundle(docs)
    if "openid" in grant.scope.split():
        bundle["id_token"] = _id_token(request, services, grant)
    return bundle


def _issuer(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _id_token(request: Request, services: Services, grant: _Grant) -> str:
    state = _auth_state(request)
    client = services.store.credentials.get_client(grant.identity)
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": _issuer(request),
        "sub": grant.identity,
        "aud": grant.client_id,
        "iat": now,
        "exp": now + ID_TOKEN_TTL_S,
        "preferred_username": identity_username(grant.identity),
        "name": client.name if client else grant.identity,
        "email": None,
        "identity_provider": "compute-webservice",
        "identity_set": [{"sub": grant.identity, "username": identity_username(grant.identity)}],
    }
    if grant.nonce:
        claims["nonce"] = grant.nonce
    return jwt.encode(claims, state.key, algorithm="RS256", headers={"kid": state.kid})


@router.get("/.well-known/openid-configuration")
async def openid_configuration(request: Request) -> dict[str, Any]:
    base = _issuer(request)
    return {
        "issuer": base,
        "authorization_endpoint": f"{base}/v2/oauth2/authorize",
        "token_endpoint": f"{base}/v2/oauth2/token",
        "userinfo_endpoint": f"{base}/v2/oauth2/userinfo",
        "revocation_endpoint": f"{base}/v2/oauth2/token/revoke",
        "jwks_uri": f"{base}/jwk.json",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }


@router.get("/jwk.json")
async def jwks(request: Request) -> dict[str, Any]:
    state = _auth_state(request)
    key = jwt.algorithms.RSAAlgorithm.to_jwk(state.key.public_key(), as_dict=True)
    return {"keys": [{**key, "kid": state.kid, "use": "sig", "alg": "RS256"}]}
