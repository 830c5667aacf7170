"""Endpoint configuration: inert pydantic models of config.yaml and their loader.

A document with ``engine:`` is a user endpoint (`EndpointConfig`); one without is a manager
(`ManagerConfig`). `EngineConfig` is the base of the four engine models; a validated one is
what `endpoint.engines.build.build_engine` receives.
"""

from endpoint.config.check import check, describe
from endpoint.config.engines import EngineConfig
from endpoint.config.files import load_config, load_endpoint_dir
from endpoint.config.loader import load_config_text, load_engine
from endpoint.config.model import EndpointConfig, ManagerConfig

__all__ = [
    "EndpointConfig",
    "EngineConfig",
    "ManagerConfig",
    "check",
    "describe",
    "load_config",
    "load_config_text",
    "load_endpoint_dir",
    "load_engine",
]
