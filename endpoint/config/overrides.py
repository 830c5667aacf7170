"""The files `configure` may take instead of its defaults (official 4.19 option names).

`--core-config` (`--manager-config` before 4.18), `--template-config`, `--schema-config`,
`--user-env-config` and `--id-mapping-config` each name a file that becomes one of the new
endpoint's files. Each is checked here before anything is written: a regular file, at most
`MAX_OVERRIDE_BYTES`, UTF-8, and of the right shape, so a typo fails `configure` with the file's
name and the problem instead of failing `start` later.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from endpoint.config.loader import parse_yaml
from endpoint.errors import ConfigError

#: Real files of each kind are a few KiB; the bound keeps a wrong path (a log, a disk image)
#: from being read whole into memory.
MAX_OVERRIDE_BYTES = 1024 * 1024


def read_text(path: Path, what: str) -> str:
    """The text of a regular file of at most MAX_OVERRIDE_BYTES; ConfigError naming it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        # Checked on the open file: a FIFO or a device would block or never end.
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ConfigError(f"{what} {path}: not a regular file")
        data = f.read(MAX_OVERRIDE_BYTES + 1)
    if len(data) > MAX_OVERRIDE_BYTES:
        raise ConfigError(f"{what} {path}: larger than {MAX_OVERRIDE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def core_config(path: Path) -> dict[str, Any]:
    """`--core-config`: a config.yaml document (checked in full once options are added)."""
    data, _ = parse_yaml(read_text(path, "--core-config"), str(path))
    return data


def template(path: Path) -> str:
    """`--template-config`: Jinja2 text, rendered per user by the core endpoint."""
    return read_text(path, "--template-config")


def schema(path: Path) -> str:
    """`--schema-config`: a JSON Schema object that validates user_endpoint_config."""
    text = read_text(path, "--schema-config")
    doc = _json(text, path, "--schema-config")
    if not isinstance(doc, dict):
        raise ConfigError(f"--schema-config {path}: must be a JSON object (a JSON Schema)")
    try:
        jsonschema.validators.validator_for(doc).check_schema(doc)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "<top level>"
        raise ConfigError(
            f"--schema-config {path}: not a valid JSON Schema at {where}: {e.message}"
        ) from None
    return text


def user_environment(path: Path) -> str:
    """`--user-env-config`: a YAML mapping of variable names to plain values."""
    text = read_text(path, "--user-env-config")
    data, _ = parse_yaml(text, str(path))
    for key, value in data.items():
        if not isinstance(key, str) or not key or isinstance(value, dict | list):
            raise ConfigError(
                f"--user-env-config {path}: {key!r} must be a variable name with a plain value"
            )
    return text


def identity_mapping(path: Path) -> str:
    """`--id-mapping-config`: Globus identity mapping JSON (a list of mappings, or one)."""
    text = read_text(path, "--id-mapping-config")
    doc = _json(text, path, "--id-mapping-config")
    if not isinstance(doc, list | dict):
        raise ConfigError(f"--id-mapping-config {path}: must be a JSON list or object")
    return text


def _json(text: str, path: Path, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{what} {path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None


@dataclass(frozen=True)
class Overrides:
    """What the file options gave, read and checked; None: the default file."""

    core_config: dict[str, Any] | None = None
    template: str | None = None
    schema: str | None = None
    user_environment: str | None = None
    identity_mapping: str | None = None

    @property
    def user_files(self) -> list[str]:
        """The options given that only a core (multi-user) endpoint uses."""
        given = {
            "--template-config": self.template,
            "--schema-config": self.schema,
            "--user-env-config": self.user_environment,
            "--id-mapping-config": self.identity_mapping,
        }
        return [flag for flag, value in given.items() if value is not None]


def read_all(
    core: Path | None = None,
    template_path: Path | None = None,
    schema_path: Path | None = None,
    user_env: Path | None = None,
    id_mapping: Path | None = None,
) -> Overrides:
    return Overrides(
        core_config=core_config(core) if core else None,
        template=template(template_path) if template_path else None,
        schema=schema(schema_path) if schema_path else None,
        user_environment=user_environment(user_env) if user_env else None,
        identity_mapping=identity_mapping(id_mapping) if id_mapping else None,
    )


__all__ = ["MAX_OVERRIDE_BYTES", "Overrides", "read_all", "read_text"]
