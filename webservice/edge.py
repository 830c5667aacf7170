"""The request edge (ASGI middleware): who is calling and how big the body is, before reading it.

FastAPI reads and parses a body before it runs the route's dependencies, so without this an
anonymous client could make the service buffer and parse any amount of JSON before its 401,
and an authenticated one any amount before a 503. Here, for a request that carries a body:

1. a route that needs a bearer token gets it checked first (401, nothing read);
2. a declared length over the limit is refused (413, nothing read);
3. the body is read with a per-chunk and a total deadline (408) and counted as it arrives
   (413 as soon as it passes the limit, for chunked bodies too), then handed to the app.

The submit route's limit follows the submission limit (`Limits.submit_body_bytes`), and its
413 is the documented TASK_PAYLOAD_TOO_LARGE, as for a submission found too large once parsed.

Every refusal closes the connection: the rest of an unread body is never drained.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request

from webservice.api.submit import is_submit_path
from webservice.errors import BadRequest, PayloadTooLarge, RequestTimeout, ServiceError
from webservice.limits import Limits
from webservice.security import CALLER_STATE, authenticate
from webservice.transport import edge_log

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Routes whose callers authenticate inside the (small, form) body: the OAuth2 routes.
FORM_PATHS = frozenset(
    {
        "/v2/oauth2/token",
        "/v2/oauth2/token/revoke",
        "/v2/oauth2/token/introspect",
        "/v2/oauth2/authorize",
        # The status page's sign-in and sign-out forms (a session cookie, not a token).
        "/status/login",
        "/status/logout",
    }
)


class _Disconnected(Exception):
    """The client went away while sending its body: there is nobody to answer."""


class EdgeGuard:
    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._admit(scope, receive)
        except _Disconnected:
            return
        except ServiceError as refused:
            edge_log.warning(
                f"refused-{refused.status}",
                "refused %s %s: %s",
                scope.get("method"),
                scope.get("path"),
                refused.message,
            )
            await _refuse(send, refused)
            return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive) -> Receive:
        headers = Headers(scope=scope)
        length = _content_length(headers)
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not length and not chunked:
            return receive
        path = scope.get("path", "")
        form = path in FORM_PATHS
        submit = is_submit_path(path)
        limit = self._body_limit(form, submit)
        if not form:
            _authenticate_first(scope)
        too_large = functools.partial(self._too_large, limit, submit)
        if length is not None and length > limit:
            raise too_large(length)
        return _replay(await self._read(receive, limit, too_large), receive)

    def _body_limit(self, form: bool, submit: bool) -> int:
        if submit:
            return self.limits.submit_body_bytes
        return self.limits.max_form_bytes if form else self.limits.max_body_bytes

    def _too_large(self, limit: int, submit: bool, declared: int | None) -> PayloadTooLarge:
        """The 413 for a body over ``limit``: its ``declared`` length, if it gave one."""
        size = "" if declared is None else f"({declared} bytes) "
        if not submit:
            return PayloadTooLarge(f"the request body {size}exceeds {limit} bytes")
        return PayloadTooLarge(
            f"the submission's body {size}exceeds {limit} bytes, so its function code and"
            f" payloads cannot fit the limit of {self.limits.max_submission_bytes} bytes per"
            " submission; pass large data by reference (a file or URL) or submit fewer tasks"
            " at once",
            code="TASK_PAYLOAD_TOO_LARGE",
        )

    async def _read(
        self, receive: Receive, limit: int, too_large: Callable[[int | None], PayloadTooLarge]
    ) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout_s
        chunks: list[bytes] = []
        size = 0
        while True:
            wait = min(self.limits.body_idle_timeout_s, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.001))
            except TimeoutError:
                raise RequestTimeout("the request body did not arrive in time") from None
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(None)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise BadRequest("Content-Length is not a number") from None
    if length < 0:
        raise BadRequest("Content-Length is negative")
    return length


def _authenticate_first(scope: Scope) -> None:
    """401 before the body is read; the caller is kept for the route (no second lookup)."""
    services = getattr(scope["app"].state, "services", None)
    if services is None:  # not started: the route answers
        return
    caller = authenticate(Request(scope), services)
    scope.setdefault("state", {})[CALLER_STATE] = caller


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # disconnect detection

    return replay


async def _refuse(send: Send, error: ServiceError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The rest of the body is never read, so the connection cannot be reused.
        (b"connection", b"close"),
        *((k.lower().encode(), v.encode()) for k, v in error.headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
