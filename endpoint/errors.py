"""The one exception tree of the endpoint package.

Callers catch these, never library exceptions: adapters (pika, globus_sdk, sqlite) translate
their errors at the edge.
"""

from __future__ import annotations


class EndpointError(Exception):
    """Base of every error this package raises on purpose."""


class ProtocolError(EndpointError):
    """A message on the wire could not be decoded or has the wrong shape."""


class SerializationError(EndpointError):
    """A payload could not be (de)serialized by any permitted strategy."""


class SerializerNotAllowed(SerializationError):
    """A payload uses a strategy that `allowed_serializers` does not permit."""


class ConfigError(EndpointError):
    """The endpoint configuration is invalid; the message names the key."""


class ServiceError(EndpointError):
    """The Compute web service refused or failed a request."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class ServiceUnreachable(ServiceError):
    """The web service could not be reached at all (network error)."""


class BrokerError(EndpointError):
    """The AMQP broker connection failed or closed."""


class JournalError(EndpointError):
    """The local task/result journal could not be read or written."""


class LifecycleError(EndpointError):
    """An endpoint directory, pid file or state transition problem."""


class AlreadyRunning(LifecycleError):
    """Another instance holds the endpoint lock."""
