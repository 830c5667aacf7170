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

from endpoint.config import load_endpoint_dir
from endpoint.config.overrides import Overrides
from endpoint.errors import EndpointExists, LifecycleError
from endpoint.host.dirs import CONFIG_FILE, has_config, user_dir, validate_name
from endpoint.host.files import open_private
from endpoint.manager.defaults import USER_SCHEMA, USER_TEMPLATE

TEMPLATE_FILE = "user_config_template.yaml.j2"
SCHEMA_FILE = "user_config_schema.json"
USER_ENV_FILE = "user_environment.yaml"
ID_MAPPING_EXAMPLE = "example_identity_mapping_config.json"
#: `--id-mapping-config`'s copy (the official name).
ID_MAPPING_FILE = "identity_mapping_config.json"

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
    #: A core (multi-user, formerly "manager") endpoint. None: what `files.core_config` is
    #: (a document without `engine:` is a core endpoint's), else a user endpoint.
    multi_user: bool | None = False
    display_name: str | None = None
    auth_policy: str | None = None
    subscription_id: str | None = None
    contact_email: str | None = None
    files: Overrides = field(default_factory=Overrides)

    @property
    def core(self) -> bool:
        if self.multi_user is not None:
            return self.multi_user
        return self.files.core_config is not None and "engine" not in self.files.core_config


@dataclass
class Created:
    ep_dir: Path
    config: Path
    files: list[Path] = field(default_factory=list)


def is_privileged() -> bool:
    return os.geteuid() == 0


def check_options(opts: Options) -> None:
    """The official rules between options, as LifecycleErrors saying what to change."""
    given = opts.files.core_config
    if opts.core and given is not None and "engine" in given:
        raise LifecycleError(
            "--core-config: a core endpoint's config.yaml must not have an engine: block (it"
            " belongs in the user config template, --template-config)"
        )
    if not opts.core and given is not None and "engine" not in given:
        raise LifecycleError(
            "--core-config has no engine: block, so it configures a core endpoint; drop"
            " --multi-user false (or add an engine: block for a single-user endpoint)"
        )
    if not opts.core and opts.files.user_files:
        raise LifecycleError(
            f"{', '.join(opts.files.user_files)} only apply to a core (multi-user) endpoint"
            " (hint: --multi-user true)"
        )
    if opts.core and not (opts.contact_email or (given or {}).get("email")):
        raise LifecycleError(
            "Email must be specified via --contact-email for core (multi-user) endpoints"
        )


def _config_data(opts: Options, identity_mapping: Path | None) -> dict[str, Any]:
    """`--core-config`'s document (or nothing), with the options written over it."""
    data: dict[str, Any] = dict(opts.files.core_config or {})
    if opts.display_name is not None or "display_name" not in data:
        data["display_name"] = opts.display_name
    if opts.auth_policy:
        data["authentication_policy"] = opts.auth_policy
    if opts.subscription_id:
        data["subscription_id"] = opts.subscription_id
    if opts.core:
        if opts.contact_email:
            data["email"] = opts.contact_email
        if identity_mapping is not None:
            data["identity_mapping_config_path"] = str(identity_mapping)
        # As officially: a core endpoint is listed for everyone who may use it.
        data.setdefault("public", True)
    elif "engine" not in data:
        data["engine"] = dict(DEFAULT_ENGINE)
    return data


def _write(path: Path, text: str, created: Created, mode: int = 0o600) -> None:
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    created.files.append(path)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode)  # O_CREAT's mode is filtered by the umask
        f.write(text)


def _mapping_file(opts: Options, ep_dir: Path) -> Path | None:
    if not opts.core:
        return None
    if opts.files.identity_mapping is not None:
        return ep_dir / ID_MAPPING_FILE
    return ep_dir / ID_MAPPING_EXAMPLE if is_privileged() else None


def _write_all(name: str, opts: Options, created: Created) -> None:
    ep_dir = created.ep_dir
    mapping = _mapping_file(opts, ep_dir)
    default_engine = not opts.core and opts.files.core_config is None
    header = CONFIG_HEADER.format(name=name) + (ENGINE_NOTE if default_engine else "")
    config = header + yaml.safe_dump(_config_data(opts, mapping), sort_keys=False)
    _write(created.config, config, created)
    if not opts.core:
        return
    files = opts.files
    template = USER_TEMPLATE if files.template is None else files.template
    _write(ep_dir / TEMPLATE_FILE, template, created, 0o644 if mapping else 0o600)
    schema = json.dumps(USER_SCHEMA, indent=2) + "\n" if files.schema is None else files.schema
    _write(ep_dir / SCHEMA_FILE, schema, created)
    env = USER_ENVIRONMENT if files.user_environment is None else files.user_environment
    _write(ep_dir / USER_ENV_FILE, env, created)
    if mapping is not None:
        example = json.dumps(ID_MAPPING, indent=2) + "\n"
        _write(
            mapping, example if files.identity_mapping is None else files.identity_mapping, created
        )


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
        # The document as written, files in place: a bad --core-config fails here, undone.
        load_endpoint_dir(ep_dir)
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
