"""What a user endpoint's runtime takes from its config: one place, for every way it starts.

A user endpoint starts either from `compute-endpoint start` (`admin/start.py`) or from a
manager's launch document (`runtime/managed.py`). Both read the config through
`RuntimeSettings.from_config`, so a config key the runtime honours is honoured on both paths.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from endpoint.config import EndpointConfig


@dataclass(frozen=True)
class RuntimeSettings:
    heartbeat_period: float
    prefetch_count: int
    allowed_functions: frozenset[str] | None
    max_retries_on_system_failure: int
    max_task_size: int
    idle_heartbeats_soft: int
    idle_heartbeats_hard: int
    heartbeat_threshold: float | None
    amqp_port: int | None
    #: `paths.endpoint_dir`: the journal and the engine's files; None: the endpoint's dir
    work_dir: Path | None = None

    @classmethod
    def from_config(
        cls, cfg: EndpointConfig, allowed_functions: Iterable[str] | None = None
    ) -> RuntimeSettings:
        """`allowed_functions` given by a manager (its own list) wins over the config's."""
        allowed = allowed_functions
        if allowed is None and cfg.allowed_functions is not None:
            allowed = [str(f) for f in cfg.allowed_functions]
        return cls(
            heartbeat_period=cfg.heartbeat_period,
            prefetch_count=cfg.prefetch_count,
            allowed_functions=frozenset(allowed) if allowed is not None else None,
            max_retries_on_system_failure=cfg.engine.max_retries_on_system_failure,
            max_task_size=cfg.max_task_size,
            idle_heartbeats_soft=cfg.idle_heartbeats_soft,
            idle_heartbeats_hard=cfg.idle_heartbeats_hard,
            heartbeat_threshold=cfg.heartbeat_threshold,
            amqp_port=cfg.amqp_port,
            work_dir=cfg.paths.endpoint_dir,
        )
