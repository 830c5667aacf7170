"""Engines run tasks: `build_engine` turns the config's ``engine`` mapping into one."""

from __future__ import annotations

import inspect
from typing import Any

from endpoint.engines.base import Engine, ResultCallback, TaskSubmission
from endpoint.engines.htex import GlobusComputeEngine
from endpoint.engines.mpi import GlobusMPIEngine
from endpoint.engines.process import ProcessPoolEngine
from endpoint.engines.routing import ROUTING_KEYS, RoutingEngine, build_routing_engine
from endpoint.engines.thread import ThreadPoolEngine
from endpoint.errors import ConfigError

__all__ = [
    "ENGINE_TYPES",
    "Engine",
    "GlobusComputeEngine",
    "GlobusMPIEngine",
    "ProcessPoolEngine",
    "ResultCallback",
    "RoutingEngine",
    "TaskSubmission",
    "ThreadPoolEngine",
    "build_engine",
]

#: Engine classes by the config's ``type`` value.
ENGINE_TYPES: dict[str, type[Engine]] = {
    "ThreadPoolEngine": ThreadPoolEngine,
    "ProcessPoolEngine": ProcessPoolEngine,
    "GlobusComputeEngine": GlobusComputeEngine,
    "GlobusMPIEngine": GlobusMPIEngine,
}


def build_engine(spec: dict[str, Any]) -> Engine:
    """Build the engine a config's ``engine:`` mapping describes (``type`` plus kwargs).

    With ``container_routing`` the result is a `RoutingEngine` around the configured engine
    (`endpoint.engines.routing`).
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"engine must be a mapping with a 'type' key, got {spec!r}")
    kwargs = dict(spec)
    kind = kwargs.pop("type", None)
    routing = {key: kwargs.pop(key) for key in ROUTING_KEYS if key in kwargs}
    cls = ENGINE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(
            f"engine.type {kind!r} is not supported; valid types: {', '.join(ENGINE_TYPES)}"
        )
    accepted = engine_options(cls)
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(
                f"engine.{key} is not an option of {kind}; valid options: "
                f"{', '.join(sorted(accepted))}"
            )
    try:
        return build_routing_engine(cls, kwargs, routing)
    except ConfigError as e:
        raise ConfigError(f"engine ({kind}): {e}") from e


def engine_options(cls: type[Engine]) -> set[str]:
    """The keyword options `cls` accepts, following ``**kwargs`` up the class hierarchy."""
    names: set[str] = set(cls.passthrough_options())
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in params if p.kind == p.KEYWORD_ONLY}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names
