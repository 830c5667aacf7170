"""The one exception tree of the endpoint package.

Callers catch these, never library exceptions: adapters (pika, globus_sdk, sqlite) translate
their errors at the edge. `cli/app.py` maps each class to a documented exit code.

    EndpointError
     +-- ProtocolError
     +-- SerializationError > SerializerNotAllowed
     +-- ConfigError                        78
     |    +-- SetupFailed                   78  (endpoint_setup exited non-zero)
     |    +-- TemplateError                 78  (a user endpoint config did not render)
     |         +-- UserOptionsInvalid           (the submitter's options: schema, reserved)
     +-- CommandRefused                         (a manager command that is not obeyed)
     |    +-- IdentityRefused                   (untrusted or unmapped identity)
     +-- SpawnError                             (a user endpoint process could not start)
     +-- ServiceError                       65/69/70/77 by HTTP status
     |    +-- ServiceUnreachable            75
     +-- AuthError                          77
     +-- BrokerError
     +-- JournalError
     +-- ContainerError                     (task results, never an exit code)
     |    +-- ContainerRuntimeMissing       the docker/podman/... binary or daemon is absent
     |    +-- ImageNotFound                 the image is not on this host and cannot be pulled
     |    +-- WorkerMismatch                the image's worker cannot serve this endpoint
     +-- LifecycleError                     1
          +-- AlreadyRunning                73
          +-- NotConfigured, EndpointExists 1
          +-- Refused                       1   (needs --force)
          |    +-- EndpointOnline           255 (delete of an online endpoint)
          +-- StopFailed                    255 (the process survived SIGKILL)
          +-- PermissionDenied              77
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


class SetupFailed(ConfigError):
    """`endpoint_setup` exited non-zero; carries its combined output."""

    def __init__(self, message: str, returncode: int, output: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.output = output


class ServiceError(EndpointError):
    """The Compute web service refused or failed a request."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class ServiceUnreachable(ServiceError):
    """The web service could not be reached at all (network error)."""


class AuthError(EndpointError):
    """Login is missing, was refused, or needs a terminal that is not there."""


class BrokerError(EndpointError):
    """The AMQP broker connection failed or closed."""


class JournalError(EndpointError):
    """The local task/result journal could not be read or written."""


class ContainerError(EndpointError):
    """A container runtime could not run what the engine asked of it."""


class ContainerRuntimeMissing(ContainerError):
    """The runtime's command or daemon is not available on this host."""


class ImageNotFound(ContainerError):
    """The image is not present locally and could not be pulled."""


class WorkerMismatch(ContainerError):
    """The worker an image would run cannot serve this endpoint (Python minor, dill, ...)."""


class LifecycleError(EndpointError):
    """An endpoint directory, pid file or state transition problem."""


class BlocksFailing(LifecycleError):
    """Batch jobs keep ending before a worker connects: the block breaker tripped."""


class AlreadyRunning(LifecycleError):
    """Another instance holds the endpoint lock."""


class NotConfigured(LifecycleError):
    """No endpoint directory (or no configuration in it) matches the name or id."""


class EndpointExists(LifecycleError):
    """`configure` of a name that already has a configuration."""


class Refused(LifecycleError):
    """A destructive command refused to act without --force."""


class EndpointOnline(Refused):
    """`delete` of an endpoint the service reports online, without --force."""


class StopFailed(LifecycleError):
    """The endpoint process could not be ended, not even by SIGKILL."""


class PermissionDenied(LifecycleError):
    """A file the command must write (a systemd unit, say) is not writable by this user."""


class TemplateError(ConfigError):
    """A user endpoint configuration could not be rendered from the manager's template."""


class UserOptionsInvalid(TemplateError):
    """The submitter's `user_endpoint_config` is not acceptable (schema, reserved names)."""


class CommandRefused(EndpointError):
    """A manager command was malformed, stale or unknown, and is not obeyed."""


class IdentityRefused(CommandRefused):
    """The command's identities are not trusted here, or map to no usable local user."""


class SpawnError(EndpointError):
    """A user endpoint process could not be started."""


class UserEnvError(EndpointError):
    """A per-user Python environment (endpoint.manager.userenv) could not be built or used."""
