"""`build_engine`: a validated engine model (a config's ``engine``) made into an engine.

The model (`endpoint.config.engines`, `endpoint.config.htex`) is the one place that checks an
engine's options and holds their defaults; engines read its fields and check nothing again.
Building may still fail for reasons only the host knows (a network interface that is not
there, a cloud SDK that is not installed): those are `ConfigError`s naming the engine.

Implementations are imported only when built, so that importing this module (or any engine's
interface) loads no Parsl, docker or process-pool code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from endpoint.engines.base import TaskEngine
from endpoint.errors import ConfigError

if TYPE_CHECKING:
    from endpoint.config.engines import EngineConfig
    from endpoint.engines.base import Engine

#: Engine classes by the config's ``type`` value.
ENGINE_TYPES: dict[str, str] = {
    "ThreadPoolEngine": "endpoint.engines.thread",
    "ProcessPoolEngine": "endpoint.engines.process",
    "GlobusComputeEngine": "endpoint.engines.htex.engine",
    "GlobusMPIEngine": "endpoint.engines.htex.mpi",
}


def engine_class(kind: str) -> type[TaskEngine]:
    cls = getattr(importlib.import_module(ENGINE_TYPES[kind]), kind)
    assert isinstance(cls, type) and issubclass(cls, TaskEngine)
    return cls


def build_engine(config: EngineConfig) -> Engine:
    """Build (not start) the engine a validated ``engine:`` model describes.

    With ``container_routing`` the result is a `RoutingEngine` around the configured engine
    (`endpoint.engines.routing`).
    """
    from endpoint.engines.routing import build_routing_engine

    try:
        return build_routing_engine(engine_class(config.type), config)
    except ConfigError as e:
        raise ConfigError(f"engine ({config.type}): {e}") from e


def build_engine_from_dict(spec: dict[str, Any]) -> Engine:
    """Validate ``spec`` as a config file's ``engine:`` mapping, then build it (tests, tools)."""
    from endpoint.config.loader import load_engine

    return build_engine(load_engine(spec))
