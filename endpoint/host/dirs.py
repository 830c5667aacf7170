"""Where endpoints live: the user dir, endpoint names and ids, NAME_OR_UUID resolution.

Every process kind reads these rules (the CLI to find a directory, a manager to name a user
endpoint's, the runtime to write its files), so they live here and import nothing but errors.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

from endpoint.errors import LifecycleError, NotConfigured
from endpoint.host.files import write_replace

ENDPOINT_JSON = "endpoint.json"
CONFIG_FILE = "config.yaml"
LEGACY_CONFIG_FILE = "config.py"
DEFAULT_NAME = "default"
#: Points a command straight at one endpoint directory (the official 4.19 knob).
ENDPOINT_DIR_ENV = "GLOBUS_COMPUTE_ENDPOINT_DIR"
USER_DIR_ENV = "GLOBUS_COMPUTE_USER_DIR"
MAX_NAME_LEN = 128

# Parsl later puts the name into shell command lines, hence the conservative character rules.
_BAD_NAME_CHARS = re.compile(r"[/\\'\"\s]")


def user_dir() -> Path:
    env = os.environ.get(USER_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".globus_compute"


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def validate_name(name: str) -> str:
    """Return `name` if it may name an endpoint directory; LifecycleError saying why not."""
    problem = None
    if not name:
        problem = "it is empty"
    elif len(name) > MAX_NAME_LEN:
        problem = f"it is longer than {MAX_NAME_LEN} characters"
    elif _BAD_NAME_CHARS.search(name):
        problem = "it contains a slash, a backslash, a quote or whitespace"
    elif name.startswith(".") or ".." in name:
        problem = "it starts with '.' or contains '..'"
    elif is_uuid(name):
        problem = "a UUID would be mistaken for an endpoint id"
    if problem:
        raise LifecycleError(f"invalid endpoint name {name!r}: {problem}")
    return name


def endpoint_dir(name: str) -> Path:
    return user_dir() / validate_name(name)


def has_config(ep_dir: Path) -> bool:
    return (ep_dir / CONFIG_FILE).is_file() or (ep_dir / LEGACY_CONFIG_FILE).is_file()


def find_by_id(endpoint_id: str) -> Path | None:
    """The configured directory whose `endpoint.json` records `endpoint_id`."""
    root = user_dir()
    for ep_json in sorted(root.glob(f"*/{ENDPOINT_JSON}")) if root.is_dir() else []:
        found = read_endpoint_id(ep_json.parent)
        if found and found.lower() == endpoint_id.lower() and has_config(ep_json.parent):
            return ep_json.parent
    return None


def resolve(target: str | None) -> Path:
    """The directory of NAME_OR_UUID (default: $GLOBUS_COMPUTE_ENDPOINT_DIR, else `default`).

    Raises NotConfigured when nothing configured matches.
    """
    if target is None and os.environ.get(ENDPOINT_DIR_ENV):
        ep_dir = Path(os.environ[ENDPOINT_DIR_ENV]).expanduser()
    elif target is not None and is_uuid(target):
        found = find_by_id(target)
        if found is None:
            raise NotConfigured(
                f"Failed to find endpoint configuration: no endpoint under {user_dir()} "
                f"has id {target}"
            )
        ep_dir = found
    else:
        ep_dir = endpoint_dir(target or DEFAULT_NAME)
    if not has_config(ep_dir):
        raise NotConfigured(
            f"Failed to find endpoint configuration in {ep_dir} (no {CONFIG_FILE}); "
            f"create it with: compute-endpoint configure {ep_dir.name}"
        )
    return ep_dir


def read_endpoint_id(ep_dir: Path) -> str | None:
    try:
        data = json.loads((ep_dir / ENDPOINT_JSON).read_text())
    except (OSError, ValueError):
        return None
    value = data.get("endpoint_id") if isinstance(data, dict) else None
    return str(value) if value else None


def write_endpoint_id(ep_dir: Path, endpoint_id: str) -> None:
    write_replace(ep_dir / ENDPOINT_JSON, json.dumps({"endpoint_id": endpoint_id}))
