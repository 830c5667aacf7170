"""Settings of one web-service instance: inert data, built once by the CLI (or a test)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

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

    @property
    def handout_amqp_url(self) -> str:
        return self.public_amqp_url or self.amqp_url
