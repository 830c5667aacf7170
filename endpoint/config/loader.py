"""Load `config.yaml` into an EndpointConfig with errors that name the key and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from endpoint.config.model import EndpointConfig
from endpoint.errors import ConfigError


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each mapping-key path in the YAML document to its 1-based line number."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _describe(err: ValidationError, text: str, source: str) -> str:
    lines = _key_lines(text)
    parts = []
    for item in err.errors():
        path = tuple(str(p) for p in item["loc"])
        line = next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), None)
        where = f" (line {line})" if line else ""
        key = ".".join(path) or "<top level>"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{key}{where}: {msg}")
    return f"{source}: invalid configuration:\n  " + "\n  ".join(parts)


def load_config_text(text: str, source: str = "config.yaml") -> EndpointConfig:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    try:
        return EndpointConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, text, source)) from e


def load_config(path: Path) -> tuple[EndpointConfig, str]:
    """Return the parsed config and its raw text (sent as registration metadata)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    return load_config_text(text, str(path)), text
