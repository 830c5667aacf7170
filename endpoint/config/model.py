"""The two kinds of ``config.yaml``: a user endpoint (it has ``engine:``) and a manager.

Field names and defaults follow the official endpoint (features.md §2.2-2.4) so existing files
load unchanged. Like upstream, the presence of ``engine:`` decides the kind: with it the
endpoint runs tasks (`EndpointConfig`); without it, it is a manager that starts user endpoints
from a template (`ManagerConfig`). Unknown keys are errors, never silently ignored; keys that
were removed or never did anything are refused with the reason (`endpoint.config.retired`).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from endpoint.config import retired
from endpoint.config.engines import EngineConfig, ProcessPoolEngineConfig, ThreadPoolEngineConfig
from endpoint.config.htex import GlobusComputeEngineConfig, GlobusMPIEngineConfig
from endpoint.config.issues import Issue, fail
from endpoint.protocol.limits import DEFAULT_MAX_TASK_SIZE

log = logging.getLogger(__name__)

MIN_HEARTBEAT_PERIOD = 5.0

#: The engine used when an ``engine:`` block has no ``type``. The official endpoint promised
#: this from 3.1 but, since its 4.15 rewrite, rejects such a block ("type Field required");
#: we keep the documented behaviour (features.md §8.16).
DEFAULT_ENGINE_TYPE = "GlobusComputeEngine"

ENGINE_MODELS: dict[str, type[EngineConfig]] = {
    "ThreadPoolEngine": ThreadPoolEngineConfig,
    "ProcessPoolEngine": ProcessPoolEngineConfig,
    "GlobusComputeEngine": GlobusComputeEngineConfig,
    "GlobusMPIEngine": GlobusMPIEngineConfig,
}


def _engine_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type", DEFAULT_ENGINE_TYPE)
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


AnyEngine = Annotated[
    Annotated[ThreadPoolEngineConfig, Tag("ThreadPoolEngine")]
    | Annotated[ProcessPoolEngineConfig, Tag("ProcessPoolEngine")]
    | Annotated[GlobusComputeEngineConfig, Tag("GlobusComputeEngine")]
    | Annotated[GlobusMPIEngineConfig, Tag("GlobusMPIEngine")],
    Discriminator(_engine_tag),
]

_UNSET_VAR = re.compile(r"\$(\w+|\{[^}]*\})")


def resolve_path(value: str, info: ValidationInfo) -> Path:
    """Expand ``~`` and ``$VAR``; a relative path is relative to the config file's directory."""
    expanded = os.path.expandvars(os.path.expanduser(value))
    unset = _UNSET_VAR.search(expanded)
    if unset:
        raise ValueError(f"environment variable {unset.group(1).strip('{}')} is not set")
    path = Path(expanded)
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


class BaseConfig(BaseModel):
    """Keys both kinds share (features.md §2.2)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    display_name: str | None = None
    # Checked by the web service at submit time and again per task by the endpoint.
    allowed_functions: list[uuid.UUID] | None = None
    authentication_policy: uuid.UUID | None = None
    subscription_id: uuid.UUID | None = None
    admins: list[uuid.UUID] | None = None
    high_assurance: bool = False
    amqp_port: Literal[443, 5671, 5672] | None = None
    heartbeat_period: float = 30.0
    environment: str | None = None
    local_compute_services: bool = False
    # DEBUG-level logs, as `--debug` (either one turns them on).
    debug: bool = False
    # Listed for every user in the web UI's search; it grants no access. The official endpoint
    # accepts it on every kind since all of its endpoints became core endpoints (4.18).
    public: bool = False
    # Ours: Prometheus metrics (endpoint/runtime/metrics.py). None: nothing listens; 0: a free
    # port, written to status.json ("metrics") as every bound port is.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_address: str = Field(default="127.0.0.1", min_length=1)

    @field_validator("display_name")
    @classmethod
    def _none_string(cls, value: str | None) -> str | None:
        # Older `configure` commands wrote the literal string "None".
        return None if value == "None" else value

    @field_validator("heartbeat_period")
    @classmethod
    def _clamp_heartbeat(cls, value: float) -> float:
        if value < MIN_HEARTBEAT_PERIOD:
            log.warning(
                "heartbeat_period %s is below the minimum; using %s", value, MIN_HEARTBEAT_PERIOD
            )
            return MIN_HEARTBEAT_PERIOD
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> BaseConfig:
        issues = self._combination_issues()
        if issues:
            fail(issues)
        return self

    def _combination_issues(self) -> list[Issue]:
        """Problems between keys (subclasses add theirs), all reported together."""
        issues: list[Issue] = []
        if self.high_assurance:
            # An HA endpoint must audit every task; claiming HA without that would be a lie.
            issues.append(
                (
                    ("high_assurance",),
                    "not supported: High-Assurance endpoints must keep a per-task audit log,"
                    " which this endpoint does not implement; remove it or set it to false",
                )
            )
        if self.admins and self.subscription_id is None:
            issues.append(
                (("admins",), "needs subscription_id (admins are a subscription feature)")
            )
        return issues


class PathsConfig(BaseModel):
    """Where a user endpoint keeps its files (official 4.19 ``paths``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # None: <user dir>/<endpoint name>
    endpoint_dir: Path | None = None
    # None: <endpoint_dir>/endpoint.log
    endpoint_log: Path | None = None

    @field_validator("endpoint_dir", "endpoint_log", mode="before")
    @classmethod
    def _expand(cls, value: Any, info: ValidationInfo) -> Any:
        return resolve_path(value, info) if isinstance(value, str) and value else value or None


class EndpointConfig(BaseConfig):
    """A user endpoint: it runs tasks with ``engine`` (features.md §2.3)."""

    engine: AnyEngine
    # Upstream stores and ignores this. Ours: the AMQP heartbeat timeout negotiated with the
    # broker, and how long it may block our publishes, before the connection is dropped and
    # re-opened. pika checks for silence every threshold + 5 s and needs one whole silent check,
    # so a dead link is noticed 1.5-3x this late (about 29 s at 10; measured by the fault suite).
    # At least twice heartbeat_period, as upstream clamps it.
    heartbeat_threshold: float = Field(default=120.0, gt=0)
    idle_heartbeats_soft: int = Field(default=0, ge=0)
    idle_heartbeats_hard: int = Field(default=5760, ge=0)  # 48 h at 30 s heartbeats
    endpoint_setup: str | None = None
    endpoint_teardown: str | None = None
    paths: PathsConfig = Field(default_factory=PathsConfig)
    # Unacked deliveries the broker may push to us before we journal and ack them.
    prefetch_count: int = Field(default=256, ge=1, le=65535)
    # Ours: larger task messages get a TaskTooLarge error result instead of being run.
    max_task_size: int = Field(default=DEFAULT_MAX_TASK_SIZE, ge=1)

    @property
    def mode(self) -> str:
        """Transitional: callers that still test the removed ``mode`` key see "single_user"."""
        return "single_user"

    @model_validator(mode="after")
    def _clamp_threshold(self) -> EndpointConfig:
        floor = 2 * self.heartbeat_period
        if self.heartbeat_threshold < floor:
            log.warning(
                "heartbeat_threshold %s is below 2 x heartbeat_period; using %s",
                self.heartbeat_threshold,
                floor,
            )
            object.__setattr__(self, "heartbeat_threshold", floor)  # the model is frozen
        return self

    @field_validator("engine", mode="before")
    @classmethod
    def _check_engine_type(cls, value: Any) -> Any:
        if isinstance(value, EngineConfig):
            return value
        valid = ", ".join(ENGINE_MODELS)
        if not isinstance(value, dict):
            fail([((), f"must be a mapping with a 'type' key (one of {valid})")])
        kind = value.get("type", DEFAULT_ENGINE_TYPE)
        if not isinstance(kind, str) or kind not in ENGINE_MODELS:
            why = retired.ENGINE_TYPES.get(str(kind))
            reason = f"{why}; " if why else ""
            fail(
                [(("type",), f"{kind!r} is not a valid engine type; {reason}valid types: {valid}")]
            )
        return value


class PamConfig(BaseModel):
    """PAM account and session checks before a user endpoint starts (features.md §5.8)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # As upstream: writing a `pam:` block turns PAM on unless it says `enable: false`.
    enable: bool = True
    service_name: str = Field(default="globus-compute-endpoint", min_length=1)


class ManagerConfig(BaseConfig):
    """A manager: starts a user endpoint per user configuration (features.md §2.4)."""

    # Required (start refuses without it) when run as root: shown to users as the contact.
    email: str | None = None
    identity_mapping_config_path: Path | None = None
    # None: the files beside config.yaml.
    user_config_template_path: Path | None = None
    user_config_schema_path: Path | None = None
    audit_log_path: Path | None = None
    pam: PamConfig = Field(default_factory=lambda: PamConfig(enable=False))
    mu_child_ep_grace_period_s: float = Field(default=30.0, ge=0)
    # Ours: user endpoints this manager runs at once (the official has no cap).
    max_user_endpoints: int = Field(default=32, ge=1)

    @property
    def mode(self) -> str:
        """Transitional: callers that still test the removed ``mode`` key see "manager"."""
        return "manager"

    @field_validator("pam", mode="before")
    @classmethod
    def _pam_null(cls, value: Any) -> Any:
        return PamConfig(enable=False) if value is None else value

    @field_validator(
        "identity_mapping_config_path",
        "user_config_template_path",
        "user_config_schema_path",
        mode="before",
    )
    @classmethod
    def _existing_file(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str) or not value:
            return value or None
        path = resolve_path(value, info)
        if not path.exists():
            raise ValueError(f"file not found: {path}")
        return path

    @field_validator("audit_log_path", mode="before")
    @classmethod
    def _audit_path(cls, value: Any, info: ValidationInfo) -> Any:
        return resolve_path(value, info) if isinstance(value, str) and value else value or None

    def _combination_issues(self) -> list[Issue]:
        issues = super()._combination_issues()
        if self.audit_log_path is not None:
            message = (
                "only used by High-Assurance endpoints (high_assurance: true), which this"
                " endpoint does not implement; remove it"
            )
            issues.append((("audit_log_path",), message))
        return issues


def document_kind(data: dict[str, Any]) -> type[EndpointConfig] | type[ManagerConfig]:
    """The official rule: a document with ``engine`` is a user endpoint, else a manager."""
    return EndpointConfig if "engine" in data else ManagerConfig
