"""Where endpoints live: the user dir, endpoint names and ids, NAME_OR_UUID resolution.

Every process kind reads these rules (the CLI to find a directory, a manager to name a user
endpoint's, the runtime to write its files), so they live here and import nothing but errors.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from endpoint.errors import LifecycleError, NotConfigured
from endpoint.host.files import read_small, write_replace

ENDPOINT_JSON = "endpoint.json"
DEFAULT_LOG = "endpoint.log"
CONFIG_FILE = "config.yaml"
LEGACY_CONFIG_FILE = "config.py"
DEFAULT_NAME = "default"
#: Points a command straight at one endpoint directory (the official 4.19 knob); in a user
#: endpoint, its directory when the rendered config has no `paths.endpoint_dir`.
ENDPOINT_DIR_ENV = "GLOBUS_COMPUTE_ENDPOINT_DIR"
#: The log file when the config has no `paths.endpoint_log` (official 4.16).
LOG_PATH_ENV = "GLOBUS_COMPUTE_LOG_PATH"
#: The running endpoint's name, for `endpoint_setup`, workers and user environments.
ENDPOINT_NAME_ENV = "GLOBUS_COMPUTE_ENDPOINT_NAME"
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
        data = json.loads(read_small(ep_dir / ENDPOINT_JSON))
    except (OSError, ValueError):
        return None
    value = data.get("endpoint_id") if isinstance(data, dict) else None
    return str(value) if value else None


def write_endpoint_id(ep_dir: Path, endpoint_id: str) -> None:
    write_replace(ep_dir / ENDPOINT_JSON, json.dumps({"endpoint_id": endpoint_id}))


# ---- where a running endpoint keeps its files: paths, the environment, the defaults ----------


@dataclass(frozen=True)
class RunPaths:
    """A running endpoint's directory (journal, engine files) and its log file."""

    ep_dir: Path
    log: Path


def _from_env(environ: Mapping[str, str], name: str) -> Path | None:
    """An absolute path from the environment (`~` and `$VAR` expanded), or None when unset.

    A relative one is refused: it would depend on whichever directory the process started in.
    """
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    path = Path(os.path.expandvars(os.path.expanduser(raw)))
    if not path.is_absolute():
        raise LifecycleError(f"${name} must be an absolute path, not {raw!r}")
    return path


def run_paths(
    default_dir: Path,
    endpoint_dir: Path | None,
    endpoint_log: Path | None,
    environ: Mapping[str, str],
) -> RunPaths:
    """The official precedence: `paths.*` in the config, then the environment variables, then
    `default_dir` and `<dir>/endpoint.log`. Either one pointing at the wrong kind of file is
    an error that names it."""
    ep_dir = endpoint_dir or _from_env(environ, ENDPOINT_DIR_ENV) or default_dir
    log = endpoint_log or _from_env(environ, LOG_PATH_ENV) or ep_dir / DEFAULT_LOG
    if ep_dir.exists() and not ep_dir.is_dir():
        raise LifecycleError(f"the endpoint directory {ep_dir} exists and is not a directory")
    if log.is_dir():
        raise LifecycleError(f"the endpoint log {log} is a directory, not a file")
    return RunPaths(ep_dir, log)


def started_paths(
    config_dir: Path,
    endpoint_dir: Path | None,
    endpoint_log: Path | None,
    environ: Mapping[str, str],
) -> RunPaths:
    """`run_paths` for an endpoint that `start` found by its config directory: that choice
    already used $GLOBUS_COMPUTE_ENDPOINT_DIR (`resolve`), so only the log path reads the
    environment here."""
    only_log = {LOG_PATH_ENV: environ.get(LOG_PATH_ENV, "")}
    return run_paths(config_dir, endpoint_dir, endpoint_log, only_log)


def export_paths(
    name: str, ep_dir: Path, log: Path, environ: MutableMapping[str, str]
) -> Callable[[], None]:
    """Publish the final values, as the official endpoint does, so that `endpoint_setup`,
    the engine and the workers (which inherit the environment) can find them.

    Returns what puts the previous values back: `start` also runs inside test processes and
    `restart`, where a later command must not inherit this endpoint's directory.
    """
    values = {ENDPOINT_NAME_ENV: name, ENDPOINT_DIR_ENV: str(ep_dir), LOG_PATH_ENV: str(log)}
    before = {key: environ.get(key) for key in values}
    environ.update(values)

    def restore() -> None:
        for key, value in before.items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value

    return restore
