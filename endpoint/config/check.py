"""`check-config NAME|PATH`: find a config, validate it, and show it with defaults filled in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from endpoint.config.files import load_config, load_endpoint_dir
from endpoint.config.htex import PASSTHROUGH
from endpoint.config.loader import AnyConfig
from endpoint.errors import ConfigError


def _locate(target: str) -> Path:
    """The file or endpoint directory ``target`` names.

    A bare name (no slash, no config suffix) is first looked up as an endpoint under the user
    directory, as every other subcommand does; anything else is a path.
    """
    from endpoint.host.dirs import user_dir  # lifecycle may grow to import config itself

    path = Path(target).expanduser()
    bare = "/" not in target and path.suffix not in (".yaml", ".yml", ".py")
    if bare and (user_dir() / target).is_dir():
        return user_dir() / target
    if path.exists():
        return path
    raise ConfigError(
        f"{target}: no such config file, endpoint directory, or endpoint under {user_dir()}"
    )


def check(target: str) -> tuple[AnyConfig, Path]:
    """Validate the config ``target`` names; returns it and the file it came from."""
    path = _locate(target)
    if path.is_dir():
        cfg, _text, source = load_endpoint_dir(path)
        return cfg, source
    cfg, _text = load_config(path)
    return cfg, path


def as_document(cfg: AnyConfig) -> dict[str, Any]:
    """The config as plain data, every default filled in, shaped like config.yaml."""
    data = cfg.model_dump(mode="json")
    engine = data.get("engine")
    if isinstance(engine, dict):
        engine.update(engine.pop(PASSTHROUGH, {}))
    return data


def describe(cfg: AnyConfig) -> str:
    """YAML for the parsed config (defaults filled in); it loads back to an equal config."""
    kind = "user endpoint" if "engine" in type(cfg).model_fields else "manager endpoint"
    body = yaml.safe_dump(as_document(cfg), sort_keys=False, default_flow_style=False)
    return f"# {kind} configuration, with defaults filled in\n{body}"
