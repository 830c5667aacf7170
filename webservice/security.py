"""Who is calling: bearer tokens for the API, client credentials for the token routes."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import unquote_plus

from fastapi import Depends, Request

from webservice.context import Services, get_services
from webservice.errors import OAuthError, Unauthorized
from webservice.scopes import COMPUTE_RS
from webservice.store.credentials import Client, TokenRecord

#: Where the edge (`edge.py`) keeps the caller it authenticated before reading the body.
CALLER_STATE = "caller"


@dataclass(frozen=True)
class Caller:
    """An authenticated identity. A client's identity is its client id."""

    client: Client
    resource_server: str
    scopes: tuple[str, ...]
    #: The access token's record (authentication policies check when its login happened).
    token: TokenRecord | None = None

    @property
    def identity(self) -> str:
        return self.client.client_id

    @property
    def username(self) -> str:
        return self.client.username


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a Bearer token issued by this service is required")
    return token.strip()


def _caller(services: Services, token: str) -> Caller:
    record = services.store.credentials.lookup(token)
    client = services.store.credentials.get_client(record.client_id) if record else None
    if record is None or client is None:
        raise Unauthorized("the Bearer token is unknown, expired or revoked")
    return Caller(client, record.resource_server, record.scopes, record)


# The dependencies are coroutines on purpose: FastAPI runs plain `def` dependencies in a
# thread pool, and the database connection belongs to the event-loop thread.


async def compute_caller(
    request: Request, services: Annotated[Services, Depends(get_services)]
) -> Caller:
    """The caller of a Compute API route: a live token for the Compute resource server."""
    caller = authenticate(request, services)
    if caller.resource_server != COMPUTE_RS:
        raise Unauthorized(
            f"the Bearer token is for {caller.resource_server!r}, not the Compute service"
        )
    return caller


def authenticate(request: Request, services: Services) -> Caller:
    """Any live access token of this service (raises Unauthorized)."""
    known = getattr(request.state, CALLER_STATE, None)
    if isinstance(known, Caller):
        return known
    return _caller(services, _bearer(request))


async def auth_caller(
    request: Request, services: Annotated[Services, Depends(get_services)]
) -> Caller:
    """The caller of an Auth route (userinfo): any live access token of this service."""
    return authenticate(request, services)


def client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str] | None:
    """(client_id, secret) from HTTP Basic auth, else from the form, else None."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as e:
            raise OAuthError("invalid_client", "malformed Basic credentials", 401) from e
        cid, sep, secret = decoded.partition(":")
        if not sep:
            raise OAuthError("invalid_client", "malformed Basic credentials", 401)
        # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
        return unquote_plus(cid), unquote_plus(secret)
    if "client_id" in form and "client_secret" in form:
        return form["client_id"], form["client_secret"]
    return None


CallerDep = Annotated[Caller, Depends(compute_caller)]
AuthCallerDep = Annotated[Caller, Depends(auth_caller)]
