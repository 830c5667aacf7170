"""The `config.yaml` model of a user endpoint.

Field names and defaults follow the official endpoint (features.md §2) so that existing files
load unchanged; unknown keys are rejected rather than silently ignored.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

log = logging.getLogger(__name__)

MIN_HEARTBEAT_PERIOD = 5.0


class EndpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    display_name: str | None = None
    # `single_user` consumes tasks itself; `manager` (the official 4.x model) spawns user
    # endpoints from templates on the service's command.
    mode: Literal["single_user", "manager"] = "single_user"
    engine: dict[str, Any] = Field(default_factory=lambda: {"type": "ThreadPoolEngine"})
    heartbeat_period: float = 30.0
    idle_heartbeats_soft: int = Field(default=0, ge=0)
    idle_heartbeats_hard: int = Field(default=5760, ge=0)
    amqp_port: Literal[443, 5671, 5672] | None = None
    environment: str | None = None
    local_compute_services: bool = False
    public: bool = False
    allowed_functions: list[uuid.UUID] | None = None
    authentication_policy: uuid.UUID | None = None
    subscription_id: uuid.UUID | None = None
    admins: list[uuid.UUID] | None = None
    high_assurance: bool = False
    debug: bool = False
    # Unacked deliveries the broker may push to us before we journal and ack them.
    prefetch_count: int = Field(default=256, ge=1, le=65535)

    @field_validator("heartbeat_period")
    @classmethod
    def _clamp_heartbeat(cls, value: float) -> float:
        if value < MIN_HEARTBEAT_PERIOD:
            log.warning(
                "heartbeat_period %s is below the minimum; using %s", value, MIN_HEARTBEAT_PERIOD
            )
            return MIN_HEARTBEAT_PERIOD
        return value

    @field_validator("display_name")
    @classmethod
    def _none_string(cls, value: str | None) -> str | None:
        # Older configure commands wrote the literal string "None".
        return None if value == "None" else value

    @model_validator(mode="after")
    def _engine_has_type(self) -> EndpointConfig:
        if not isinstance(self.engine.get("type"), str):
            raise ValueError("engine: missing 'type' (e.g. ThreadPoolEngine)")
        return self
