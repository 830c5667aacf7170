"""Building an `EndpointRuntime` in tests: settings from the config model's own defaults."""

from __future__ import annotations

import dataclasses
from typing import Any

from endpoint.config import EndpointConfig
from endpoint.runtime.settings import RuntimeSettings

#: Keyword arguments of `EndpointRuntime` itself; anything else is a `RuntimeSettings` field.
RUNTIME_ARGS = frozenset(
    {"endpoint_id", "ep_dir", "engine", "queues", "settings", "config_text", "pid_lock",
     "engine_factory", "title", "sessions"}
)  # fmt: skip


def runtime_settings(**overrides: Any) -> RuntimeSettings:
    """A thread-pool endpoint's settings with quick heartbeats, as the runtime tests use."""
    base = RuntimeSettings.from_config(
        EndpointConfig.model_validate({"engine": {"type": "ThreadPoolEngine"}})
    )
    quick = {"heartbeat_period": 5, "prefetch_count": 64, "max_retries_on_system_failure": 0}
    return dataclasses.replace(base, **{**quick, **overrides})


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(runtime keyword arguments, settings overrides)."""
    own = {k: v for k, v in options.items() if k in RUNTIME_ARGS}
    return own, {k: v for k, v in options.items() if k not in RUNTIME_ARGS}
