"""`configure`: create an endpoint directory with its default files.

Files are 0600 and the directory 0700 (created under umask 077), except that the user template
of a root-run multi-user endpoint is 0644, because it is read after privileges are dropped to
the mapped user. A failure part-way removes what was created, so a retry starts clean.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from endpoint.errors import EndpointExists, LifecycleError
from endpoint.host.dirs import CONFIG_FILE, has_config, user_dir, validate_name
from endpoint.host.files import open_private

TEMPLATE_FILE = "user_config_template.yaml.j2"
SCHEMA_FILE = "user_config_schema.json"
USER_ENV_FILE = "user_environment.yaml"
ID_MAPPING_EXAMPLE = "example_identity_mapping_config.json"

#: A process pool, not a thread pool: a task that calls `os._exit`, segfaults or is killed in
#: a thread runs inside the endpoint's own process and ends it at once, without a log line
#: (issue 13); in a worker process it costs only its own task a `WorkerLost` result.
DEFAULT_ENGINE: dict[str, Any] = {"type": "ProcessPoolEngine", "max_workers": 4}

ENGINE_NOTE = """\
# ProcessPoolEngine runs each task in a worker process, so a task that calls os._exit,
# crashes or is killed ends only its worker. ThreadPoolEngine starts faster but runs tasks
# inside the endpoint process: such a task would stop the endpoint itself.
"""

CONFIG_HEADER = """\
# Globus Compute endpoint configuration (compute-endpoint).
# Validate edits with: compute-endpoint check-config {name}
"""

# Jinja2 rendered per user by the manager; user values arrive JSON-quoted (injection-safe),
# and `|default()` leaves an unset option empty (YAML null).
USER_TEMPLATE = """\
# Rendered for each user endpoint from the options a submitter sends
# (Executor(user_endpoint_config={...})); see user_config_schema.json for what they may set.
endpoint_setup: {{ endpoint_setup|default() }}

engine:
  type: GlobusComputeEngine
  max_workers_per_node: 1
  provider:
    type: LocalProvider
    init_blocks: 1
    min_blocks: 0
    max_blocks: 1
    worker_init: {{ worker_init|default() }}

# Shut an unused user endpoint down after 10 quiet heartbeats (5 minutes at 30 s).
idle_heartbeats_soft: 10
idle_heartbeats_hard: 5760
"""

USER_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "endpoint_setup": {"type": "string"},
        "worker_init": {"type": "string"},
    },
    "additionalProperties": True,
}

USER_ENVIRONMENT = """\
# Extra environment variables for every user endpoint process, as KEY: value pairs.
# Example:
#   SCRATCH: /scratch/compute
"""

ID_MAPPING: list[dict[str, Any]] = [
    {
        "DATA_TYPE": "expression_identity_mapping#1.0.0",
        "mappings": [
            {"source": "{username}", "match": r"(.*)@example\.org", "output": "{0}"},
        ],
    }
]


@dataclass(frozen=True)
class Options:
    multi_user: bool = False
    display_name: str | None = None
    auth_policy: str | None = None
    subscription_id: str | None = None
    contact_email: str | None = None


@dataclass
class Created:
    ep_dir: Path
    config: Path
    files: list[Path] = field(default_factory=list)


def is_privileged() -> bool:
    return os.geteuid() == 0


def _config_data(opts: Options, identity_mapping: Path | None) -> dict[str, Any]:
    data: dict[str, Any] = {"display_name": opts.display_name}
    if opts.auth_policy:
        data["authentication_policy"] = opts.auth_policy
    if opts.subscription_id:
        data["subscription_id"] = opts.subscription_id
    if opts.multi_user:
        if opts.contact_email:
            data["email"] = opts.contact_email
        if identity_mapping is not None:
            data["identity_mapping_config_path"] = str(identity_mapping)
    else:
        data["engine"] = dict(DEFAULT_ENGINE)
    return data


def _write(path: Path, text: str, created: Created, mode: int = 0o600) -> None:
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    created.files.append(path)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode)  # O_CREAT's mode is filtered by the umask
        f.write(text)


def _write_all(name: str, opts: Options, created: Created) -> None:
    ep_dir = created.ep_dir
    mapping = ep_dir / ID_MAPPING_EXAMPLE if opts.multi_user and is_privileged() else None
    header = CONFIG_HEADER.format(name=name) + ("" if opts.multi_user else ENGINE_NOTE)
    config = header + yaml.safe_dump(_config_data(opts, mapping), sort_keys=False)
    _write(created.config, config, created)
    if not opts.multi_user:
        return
    _write(ep_dir / TEMPLATE_FILE, USER_TEMPLATE, created, 0o644 if mapping else 0o600)
    _write(ep_dir / SCHEMA_FILE, json.dumps(USER_SCHEMA, indent=2) + "\n", created)
    _write(ep_dir / USER_ENV_FILE, USER_ENVIRONMENT, created)
    if mapping is not None:
        _write(mapping, json.dumps(ID_MAPPING, indent=2) + "\n", created)


def configure(name: str, opts: Options) -> Created:
    """Create `<user dir>/<name>/`; EndpointExists if it already has a configuration."""
    ep_dir = user_dir() / validate_name(name)
    if ep_dir.is_symlink():
        # mkdir and chmod would follow it: the files would land in, and the mode change hit,
        # a directory someone else chose.
        raise LifecycleError(f"{ep_dir} is a symbolic link; refusing to configure through it")
    if has_config(ep_dir):
        raise EndpointExists(f"endpoint {name!r} is already configured in {ep_dir}")
    old_umask = os.umask(0o077)
    made_dir = not ep_dir.exists()
    created = Created(ep_dir, ep_dir / CONFIG_FILE)
    try:
        ep_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(ep_dir, 0o700)
        _write_all(name, opts, created)
    except BaseException:
        _undo(created, made_dir)
        raise
    finally:
        os.umask(old_umask)
    return created


def _undo(created: Created, made_dir: bool) -> None:
    if made_dir:
        shutil.rmtree(created.ep_dir, ignore_errors=True)
        return
    for path in created.files:
        path.unlink(missing_ok=True)
