"""The Globus Auth routes the official SDK and endpoint use (protocol.md §7).

Token routes authenticate the *client* (HTTP Basic, or form client_id/client_secret), as OAuth2
requires; userinfo takes a bearer token like every other route.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from webservice.context import Services, get_services
from webservice.errors import OAuthError
from webservice.scopes import group_by_resource_server
from webservice.security import AuthCallerDep, Caller, client_credentials
from webservice.store.credentials import ACCESS, REFRESH, Client, TokenRecord, token_hash

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _authenticate(services: Services, request: Request, form: dict[str, str]) -> Client | None:
    """The authenticated client, None when the request carries no client credentials."""
    creds = client_credentials(request, form)
    if creds is None:
        return None
    client = services.store.credentials.verify_client(*creds)
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
    if claimed is not None and claimed != rec.client_id:
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
