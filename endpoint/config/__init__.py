"""Endpoint configuration: inert pydantic models of config.yaml and their loader."""

from endpoint.config.loader import load_config, load_config_text
from endpoint.config.model import EndpointConfig

__all__ = ["EndpointConfig", "load_config", "load_config_text"]
