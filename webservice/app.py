"""The FastAPI application: wiring, lifespan, and how errors look on the wire."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from webservice import __version__, metrics
from webservice.amqp import AmqpLink
from webservice.api import ROUTERS
from webservice.broker_admin import BrokerAdmin, BrokerAdminError
from webservice.context import Services
from webservice.dispatch import Dispatcher
from webservice.edge import EdgeGuard
from webservice.errors import ServiceError, Unauthorized
from webservice.forwarder import ResultForwarder
from webservice.heartbeat_monitor import HeartbeatMonitor
from webservice.principals import Principals
from webservice.security import authenticate
from webservice.settings import Settings
from webservice.store import Store
from webservice.throttle import AuthThrottle
from webservice.topology import Names, Topology
from webservice.ui import router as status_page_router

log = logging.getLogger(__name__)

#: Routes reachable without a bearer token: the version check and the OAuth2 token routes
#: (which authenticate the client instead).
_OPEN_PATHS = ("/v2/version", "/v2/oauth2/token")


def create_app(settings: Settings) -> FastAPI:
    # No /docs or /openapi.json routes: every route but the version check needs a token.
    # The schema is still available in-process as `app.openapi()`.
    app = FastAPI(
        title="Local Globus Compute web service",
        version=__version__,
        lifespan=_lifespan(settings),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    for router in ROUTERS:
        app.include_router(router)
    metrics.install(app, settings.metrics_token_file)
    app.include_router(status_page_router)
    app.add_middleware(EdgeGuard, limits=settings.limits)
    app.state.auth_throttle = AuthThrottle(
        settings.limits.free_auth_failures, settings.limits.max_auth_delay_s
    )
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


def _lifespan(settings: Settings) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services, monitor = _build(settings)
        try:
            # Before anything connects: without the management API no endpoint or client
            # could be given an account of its own, and the service's must never be handed out.
            await _check_admin(services.principals, settings.broker_wait_s)
            await services.link.start(settings.broker_wait_s)
            await services.forwarder.start()
            await monitor.start()
            app.state.services = services
            log.info(
                "web service ready (AMQP %s, db %s)", _redacted(settings.amqp_url), settings.db_path
            )
            yield
        finally:
            # Consumers first, so no delivery is half-handled when the connection goes.
            await services.link.stop_consuming()
            await monitor.stop()
            await services.forwarder.stop()
            await services.link.close()
            services.store.close()

    return lifespan


def _build(settings: Settings) -> tuple[Services, HeartbeatMonitor]:
    store = Store.open(settings.db_path)
    store.credentials.purge_expired()
    link = AmqpLink(settings.amqp_url)
    names = Names(store.principals.key(), settings.queue_prefix)
    topology = Topology(link, names)
    admin = BrokerAdmin(settings.admin_url, settings.vhost)
    principals = Principals(admin, store.principals, names, settings.handout_amqp_url)
    link.on_ready(principals.restore)
    dispatcher = Dispatcher(settings, store, link, topology, principals)
    forwarder = ResultForwarder(link, store.tasks, settings.results_prefetch)
    monitor = HeartbeatMonitor(link, store, dispatcher, forwarder)
    services = Services(settings, store, link, topology, dispatcher, forwarder, principals)
    return services, monitor


async def _check_admin(principals: Principals, wait_s: float) -> None:
    try:
        await principals.check_admin(wait_s)
    except BrokerAdminError as e:
        raise BrokerAdminError(
            f"{e}. The service gives every endpoint and SDK client a broker account of its "
            "own through RabbitMQ's management API: enable the rabbitmq_management plugin "
            "and pass its URL with an administrator's credentials as --amqp-admin-url "
            "(env COMPUTE_WEBSERVICE_AMQP_ADMIN_URL)"
        ) from None


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    _, at, host = rest.rpartition("@")
    return f"{scheme}{sep}***@{host}" if at else url


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


def _field(loc: Any) -> str:
    return ".".join(str(part) for part in loc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # FastAPI parses a body before it checks the token; an anonymous caller still gets 401.
    if not request.url.path.startswith(_OPEN_PATHS):
        try:
            authenticate(request, request.app.state.services)
        except Unauthorized as denied:
            return JSONResponse(denied.body(), status_code=denied.status)
    errors = [
        {"field": _field(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type")}
        for e in exc.errors()
    ]
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    body = {
        "code": "VALIDATION_ERROR",
        "message": message,
        "http_status_code": 422,
        "errors": errors,
    }
    return JSONResponse(body, status_code=422)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
    body = {
        "code": codes.get(exc.status_code, "HTTP_ERROR"),
        "message": str(exc.detail),
        "http_status_code": exc.status_code,
    }
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # A bug, not a client error; still JSON, so the SDK's error path can read it.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = {"code": "INTERNAL_ERROR", "message": "internal error", "http_status_code": 500}
    return JSONResponse(body, status_code=500)
