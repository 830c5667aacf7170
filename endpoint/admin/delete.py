"""`delete`: remove an endpoint from the service and from this machine.

Without --force it refuses an endpoint that runs here or that the service reports online, and
stops at the first service error; with --force it stops a local endpoint first and carries on
past service errors (logging them), so a broken or half-deleted endpoint can always be removed.
A UUID with no local directory deletes the service's record only.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endpoint.admin import boot
from endpoint.admin.auth import LoginPrompt
from endpoint.admin.register import service_for
from endpoint.admin.stop import stop_dir
from endpoint.config import load_endpoint_dir
from endpoint.errors import (
    ConfigError,
    EndpointOnline,
    NotConfigured,
    ServiceError,
)
from endpoint.host.dirs import find_by_id, is_uuid, read_endpoint_id, resolve
from endpoint.host.pidlock import probe

log = logging.getLogger(__name__)


@dataclass
class Target:
    """What `delete NAME_OR_UUID` would remove."""

    label: str
    ep_dir: Path | None
    endpoint_id: str | None


def target_of(name_or_uuid: str | None) -> Target:
    if name_or_uuid is not None and is_uuid(name_or_uuid):
        ep_dir = find_by_id(name_or_uuid)
        label = ep_dir.name if ep_dir else name_or_uuid
        return Target(label, ep_dir, name_or_uuid)
    ep_dir = resolve(name_or_uuid)
    return Target(ep_dir.name, ep_dir, read_endpoint_id(ep_dir))


@dataclass
class Deleted:
    target: Target
    stopped: bool = False
    remote_deleted: bool = False
    removed_dir: Path | None = None
    removed_unit: Path | None = None
    warnings: list[str] = field(default_factory=list)


def _config(target: Target, force: bool, out: Deleted) -> Any:
    if target.ep_dir is None:
        return None
    try:
        return load_endpoint_dir(target.ep_dir)[0]
    except ConfigError as e:
        if not force:
            raise ConfigError(f"{e}\n(delete an endpoint with a broken config with --force)") from e
        out.warnings.append(f"ignoring the unreadable configuration: {e}")
        return None


def _tolerate(out: Deleted, force: bool, err: ServiceError) -> None:
    """404 means already gone; anything else stops us unless --force."""
    if err.http_status == 404:
        return
    if not force:
        raise err
    out.warnings.append(str(err))


def _check_status(svc: Any, target: Target, force: bool, out: Deleted) -> None:
    assert target.endpoint_id is not None
    try:
        status = svc.status(target.endpoint_id)
    except ServiceError as e:
        _tolerate(out, force, e)
        return
    if status == "online" and not force:
        raise EndpointOnline(
            f"endpoint {target.label} ({target.endpoint_id}) is online; stop it first, "
            "or delete with --force (which stops it here first)"
        )


def delete(name_or_uuid: str | None, *, force: bool, prompt: LoginPrompt | None) -> Deleted:
    target = target_of(name_or_uuid)
    out = Deleted(target)
    cfg = _config(target, force, out)
    if target.ep_dir is not None and probe(target.ep_dir).locked and not force:
        raise EndpointOnline(
            f"endpoint {target.label} is running here; stop it first, or use --force"
        )
    if target.endpoint_id is None and target.ep_dir is None:
        raise NotConfigured(f"nothing to delete for {name_or_uuid!r}")
    svc = service_for(cfg, prompt) if target.endpoint_id else None
    if svc is not None:
        _check_status(svc, target, force, out)
    if target.ep_dir is not None and probe(target.ep_dir).locked:
        out.stopped = stop_dir(target.ep_dir).report is not None
    if svc is not None and target.endpoint_id is not None:
        try:
            svc.delete(target.endpoint_id)
            out.remote_deleted = True
        except ServiceError as e:
            _tolerate(out, force, e)
    if target.ep_dir is not None:
        _remove_local(target.ep_dir, out)
    return out


def _remove_local(ep_dir: Path, out: Deleted) -> None:
    unit = boot.unit_dir() / boot.unit_name(ep_dir.name)
    if unit.exists():
        out.removed_unit = boot.disable(ep_dir.name, ep_dir).unit_path
    shutil.rmtree(ep_dir)
    out.removed_dir = ep_dir
