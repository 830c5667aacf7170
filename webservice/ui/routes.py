"""The status page's routes: sign in, the overview, one endpoint, sign out.

Signing in takes a client id and secret, as the authorization page does (`api/oauth.py`):
each client is an identity. The browser then holds an opaque session cookie (`sessions.py`):
HttpOnly, SameSite=Strict, path /status, Secure when the page is served over https. Every form
is a POST with a CSRF token, and a POST whose Origin is another site is refused. An endpoint
that is not the signed-in identity's is answered 404, exactly like one that does not exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from webservice.context import Services
from webservice.errors import OAuthError
from webservice.throttle import AuthThrottle
from webservice.ui.sessions import (
    ABSOLUTE_TTL_S,
    COOKIE_PATH,
    LOGIN_COOKIE,
    LOGIN_TTL_S,
    SESSION_COOKIE,
    Session,
    SessionStore,
)
from webservice.ui.views import StatusViews

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

#: A failed sign-in answers slowly, to make guessing a chosen secret expensive.
FAILED_SIGN_IN_DELAY_S = 1.0
#: Bounds of the optional `?refresh=N` auto-reload (a meta refresh: the page runs no script).
MIN_REFRESH_S, MAX_REFRESH_S = 2, 300
_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    # Not no-referrer: under it browsers send `Origin: null` on form POSTs, even same-origin.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _utc(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} s" if value < 60 else f"{value / 60:.1f} min"


_templates.filters.update(utc=_utc, seconds=_seconds)


# ---- plumbing ---------------------------------------------------------------------------


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _sessions(request: Request) -> SessionStore:
    store: SessionStore | None = getattr(request.app.state, "status_sessions", None)
    if store is None:
        store = SessionStore()
        request.app.state.status_sessions = store
    return store


def _session(request: Request) -> Session | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    session = _sessions(request).get(cookie)
    if (
        session is not None
        and _services(request).store.credentials.get_client(session.identity) is None
    ):
        # The client was deleted since: its sessions end with it.
        _sessions(request).end(cookie)
        return None
    return session


def _page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    body = _templates.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303, headers=_HEADERS)


def _set_cookie(request: Request, response: Response, name: str, value: str, ttl: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=ttl,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _same_origin(request: Request) -> bool:
    """A POST from a page of this service (browsers send Origin on every form POST)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # No Origin: not a browser form of another site (those always carry one), e.g. curl.
        return origin is None
    parts = urllib.parse.urlsplit(origin)
    return (parts.scheme, parts.netloc) == (request.url.scheme, request.url.netloc)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _views(request: Request, session: Session) -> StatusViews:
    services = _services(request)
    return StatusViews(
        services.store,
        session.identity,
        time.time(),
        services.settings.default_heartbeat_period_s,
    )


def _refresh(request: Request) -> int | None:
    value = request.query_params.get("refresh", "")
    if not value.isdigit():
        return None
    return min(max(int(value), MIN_REFRESH_S), MAX_REFRESH_S)


# ---- sign in and out --------------------------------------------------------------------


def _login_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    cookie = _sessions(request).new_login()
    response = _page(
        "login.html", status, error=error, login_token=SessionStore.login_token(cookie)
    )
    _set_cookie(request, response, LOGIN_COOKIE, cookie, LOGIN_TTL_S)
    return response


@router.get("/status/login")
async def login_page(request: Request) -> Response:
    if _session(request) is not None:
        return _redirect("/status")
    return _login_page(request)


def _check_secret(request: Request, client_id: str, secret: str) -> str | None:
    """The identity whose secret this is, or None; throttled per client id like the
    token routes (raises OAuthError 429 while that client id must wait)."""
    throttle: AuthThrottle = request.app.state.auth_throttle
    throttle.check(client_id)
    client = _services(request).store.credentials.verify_client(client_id, secret)
    if client is None:
        throttle.failed(client_id)
        return None
    throttle.succeeded(client_id)
    return client.client_id


@router.post("/status/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    sessions = _sessions(request)
    fresh = sessions.take_login(request.cookies.get(LOGIN_COOKIE, ""), form.get("login_token", ""))
    if not _same_origin(request) or not fresh:
        return _login_page(request, "The sign-in form expired; please sign in again.", 400)
    client_id = form.get("client_id", "").strip()
    try:
        identity = _check_secret(request, client_id, form.get("client_secret", ""))
    except OAuthError as e:
        return _login_page(request, e.message, e.status)
    if identity is None:
        await asyncio.sleep(FAILED_SIGN_IN_DELAY_S)
        return _login_page(request, "Unknown client id or wrong secret.", 401)
    log.info("status page: %s signed in", identity)
    response = _redirect("/status")
    _set_cookie(request, response, SESSION_COOKIE, sessions.create(identity), ABSOLUTE_TTL_S)
    _clear_cookie(request, response, LOGIN_COOKIE)
    return response


@router.post("/status/logout")
async def logout(request: Request) -> Response:
    form = await _form(request)
    session = _session(request)
    if session is None:
        return _redirect("/status/login")
    if not _same_origin(request) or form.get("csrf_token") != session.csrf:
        return _page("error.html", 403, message="The form expired; reload the page.")
    _sessions(request).end(request.cookies.get(SESSION_COOKIE))
    response = _redirect("/status/login")
    _clear_cookie(request, response, SESSION_COOKIE)
    return response


# ---- pages ------------------------------------------------------------------------------


@router.get("/status")
async def overview(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _redirect("/status/login")
    views = _views(request, session)
    return _page(
        "overview.html",
        session=session,
        now=time.time(),
        refresh=_refresh(request),
        endpoints=views.endpoints(),
        elsewhere=views.elsewhere(),
        tasks=views.tasks(),
    )


@router.get("/status/endpoints/{endpoint_id}")
async def endpoint_page(request: Request, endpoint_id: str) -> Response:
    session = _session(request)
    if session is None:
        return _redirect("/status/login")
    views = _views(request, session)
    endpoint = views.endpoint(endpoint_id)
    if endpoint is None:
        # The same answer for "not yours" and "no such endpoint": ids are not confirmed.
        return _page("error.html", 404, session=session, message="No such endpoint.")
    return _page(
        "endpoint.html",
        session=session,
        now=time.time(),
        refresh=_refresh(request),
        endpoint=endpoint,
        tasks=views.tasks(endpoint.endpoint_id),
    )
