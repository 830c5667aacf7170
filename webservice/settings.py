"""Settings of one web-service instance: inert data, built once by the CLI (or a test)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from webservice.limits import Limits

#: The SDK's `local` environment is fixed at http://localhost:5000 (protocol.md §1.1).
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 5000

#: Prefix of the per-task-group result queues handed to the SDK.
DEFAULT_QUEUE_PREFIX = "tg."

#: The oldest SDK and endpoint versions we accept: every 4.x speaks the protocol we serve.
MIN_SDK_VERSION = "1.0.0"
MIN_EP_VERSION = "1.0.0"


def default_db_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "compute-webservice" / "webservice.db"


@dataclass(frozen=True)
class Settings:
    """Everything an app instance needs; nothing here is read from the environment later."""

    amqp_url: str
    db_path: str = field(default_factory=lambda: str(default_db_path()))
    #: The URL given to endpoints and SDKs; differs from `amqp_url` behind NAT or in containers.
    public_amqp_url: str | None = None
    #: The broker's management API as an administrator (http://USER:PASSWORD@HOST:PORT/):
    #: how each endpoint and client gets an account of its own. None: the AMQP URL's user and
    #: host on port 15672.
    broker_admin_url: str | None = None
    queue_prefix: str = DEFAULT_QUEUE_PREFIX
    #: Lifetime of issued access tokens (the SDK caches them until they expire).
    access_token_ttl_s: int = 172_800
    refresh_token_ttl_s: int = 180 * 86_400
    #: How long `POST /v3/endpoints/{id}/lock` keeps an endpoint from re-registering.
    lock_ttl_s: int = 300
    #: Heartbeat period assumed for an endpoint whose heartbeat does not state one.
    default_heartbeat_period_s: float = 30.0
    #: A user endpoint commanded to start this recently is left alone by revivals.
    uep_restart_grace_s: float = 60.0
    #: Unacked `results` deliveries in flight to the forwarder (its batch size ceiling).
    results_prefetch: int = 500
    #: How long a submit waits for the broker to confirm its publishes before answering 503.
    confirm_timeout_s: float = 30.0
    #: How long startup waits for the broker before giving up.
    broker_wait_s: float = 60.0
    #: Request, submission and connection limits (`limits.py`).
    limits: Limits = field(default_factory=Limits)
    #: A private file holding the bearer token `GET /metrics` requires; None: loopback
    #: clients only (`webservice.metrics`).
    metrics_token_file: str | None = None

    @property
    def handout_amqp_url(self) -> str:
        """The broker address handed out; its user and password are replaced by each
        principal's own (`principals.py`): the service's account is never handed out."""
        return self.public_amqp_url or self.amqp_url

    @property
    def vhost(self) -> str:
        path = urlsplit(self.amqp_url).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    @property
    def admin_url(self) -> str:
        if self.broker_admin_url:
            return self.broker_admin_url
        parts = urlsplit(self.amqp_url)
        userinfo = parts.netloc.rpartition("@")[0]
        host = parts.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host
        return f"http://{userinfo}@{host}:15672/" if userinfo else f"http://{host}:15672/"
