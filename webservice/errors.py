"""The one exception tree of the web service, and how each error looks on the wire.

    ServiceError                  (any status; rendered as {"code", "message", ...})
     +-- BadRequest               400
     +-- Unauthorized             401  (never GARE-shaped: the SDK would start a login flow)
     +-- Forbidden                403
     +-- NotFound                 404
     +-- Conflict                 409
     +-- RequestTimeout           408  (a body that did not arrive in time)
     +-- PayloadTooLarge          413  (a body, a submission or a header-borne field)
     +-- Unprocessable            422  (a body FastAPI parsed but we cannot use)
     +-- Locked                   423
     +-- BrokerUnavailable        503  (the SDK retries 5xx, so only for transient broker trouble)
          +-- Unroutable               (a mandatory publish no queue took: its queue is gone)
     +-- OAuthError               400/401/429, in RFC 6749 shape ({"error", "error_description"})

Route code raises these; `app.py` turns them into JSON. Nothing else in the package picks
HTTP status codes.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error the service reports to an HTTP client on purpose."""

    status = 500
    code = "INTERNAL_ERROR"
    #: Extra response headers (Retry-After, Connection: close).
    headers: dict[str, str] = {}

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "http_status_code": self.status}


class BadRequest(ServiceError):
    status = 400
    code = "BAD_REQUEST"


class Unauthorized(ServiceError):
    status = 401
    code = "UNAUTHORIZED"


class Forbidden(ServiceError):
    status = 403
    code = "FORBIDDEN"


class NotFound(ServiceError):
    status = 404
    code = "NOT_FOUND"


class Conflict(ServiceError):
    status = 409
    code = "CONFLICT"


class RequestTimeout(ServiceError):
    status = 408
    code = "REQUEST_TIMEOUT"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "REQUEST_TOO_LARGE"


class Unprocessable(ServiceError):
    status = 422
    code = "VALIDATION_ERROR"


class Locked(ServiceError):
    status = 423
    code = "ENDPOINT_LOCKED"


class BrokerUnavailable(ServiceError):
    status = 503
    code = "BROKER_UNAVAILABLE"


class Unroutable(BrokerUnavailable):
    """The broker returned a mandatory publish: no queue is bound for it (one was deleted)."""

    code = "QUEUE_MISSING"


class OAuthError(ServiceError):
    """An error of the OAuth2 routes, in the shape OAuth2 clients (globus-sdk) expect."""

    def __init__(
        self, error: str, description: str, status: int = 400, retry_after_s: int | None = None
    ) -> None:
        super().__init__(description)
        self.error = error
        self.status = status
        if retry_after_s is not None:
            self.headers = {"Retry-After": str(retry_after_s)}

    def body(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "error_description": self.message,
            "code": self.error.upper(),
            "message": self.message,
        }
