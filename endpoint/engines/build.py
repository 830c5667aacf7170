"""`build_engine`: the config's ``engine`` mapping made into an engine.

Implementations are imported only when built, so that importing this module (or any engine's
interface) loads no Parsl, docker or process-pool code.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from endpoint.engines.base import Engine
from endpoint.errors import ConfigError

#: Engine classes by the config's ``type`` value.
ENGINE_TYPES: dict[str, str] = {
    "ThreadPoolEngine": "endpoint.engines.thread",
    "ProcessPoolEngine": "endpoint.engines.process",
    "GlobusComputeEngine": "endpoint.engines.htex.engine",
    "GlobusMPIEngine": "endpoint.engines.htex.mpi",
}


def engine_class(kind: str) -> type[Engine]:
    cls = getattr(importlib.import_module(ENGINE_TYPES[kind]), kind)
    assert isinstance(cls, type) and issubclass(cls, Engine)
    return cls


def build_engine(spec: dict[str, Any]) -> Engine:
    """Build the engine a config's ``engine:`` mapping describes (``type`` plus kwargs).

    With ``container_routing`` the result is a `RoutingEngine` around the configured engine
    (`endpoint.engines.routing`).
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"engine must be a mapping with a 'type' key, got {spec!r}")
    kwargs = dict(spec)
    kind = kwargs.pop("type", None)
    from endpoint.engines.routing import ROUTING_KEYS, build_routing_engine

    routing = {key: kwargs.pop(key) for key in ROUTING_KEYS if key in kwargs}
    if not isinstance(kind, str) or kind not in ENGINE_TYPES:
        raise ConfigError(
            f"engine.type {kind!r} is not supported; valid types: {', '.join(ENGINE_TYPES)}"
        )
    cls = engine_class(kind)
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
