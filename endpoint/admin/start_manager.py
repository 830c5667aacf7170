"""`start` of a manager (core) endpoint: checks, registration with its template, the loop.

Root with an identity mapping file maps identities to local users; otherwise the identities of
this login (`userinfo`) are the only ones whose commands start user endpoints.
"""

from __future__ import annotations

import getpass
import logging
import os
from typing import Any

import globus_sdk

from endpoint.admin import service
from endpoint.admin.auth import LoginPrompt, identity_client
from endpoint.admin.register import Loaded, Notifier, is_privileged, register
from endpoint.amqp.queues import QueueInfo
from endpoint.config import ManagerConfig
from endpoint.errors import AuthError, ConfigError, ServiceError, ServiceUnreachable
from endpoint.host.dirs import user_dir
from endpoint.host.pidlock import PidLock
from endpoint.manager import templating
from endpoint.manager.core import Manager, ManagerSettings, ensure_supported
from endpoint.manager.identity import Authorizer, MappingAuthorizer, MappingFile, OwnerAuthorizer

log = logging.getLogger(__name__)

#: `fork` (default: a pre-imported helper forks user endpoints) or `exec` (a fresh interpreter
#: each); a debugging and benchmarking knob, see `endpoint.manager.spawner`.
LAUNCHER_ENV = "COMPUTE_UEP_LAUNCHER"


def _check_manager(loaded: Loaded) -> ManagerConfig:
    cfg = loaded.config
    assert isinstance(cfg, ManagerConfig)
    ensure_supported(cfg)
    if is_privileged() and not cfg.email:
        raise ConfigError(
            f"{loaded.path}: a multi-user (manager) endpoint run by root needs `email`, a "
            "contact address shown to its users"
        )
    return cfg


def _manager_metadata(loaded: Loaded, cfg: ManagerConfig) -> dict[str, Any]:
    """The template and schema, checked now (a broken one fails `start`, not each user)."""
    source = templating.source_for(
        loaded.ep_dir, cfg.user_config_template_path, cfg.user_config_schema_path
    )
    templating.check_syntax(source)
    return {"user_config_template": source.text, "user_config_schema": source.schema}


def owner_identities(cfg: ManagerConfig, prompt: LoginPrompt | None) -> frozenset[str]:
    """The identities of this login (`userinfo`): only they may start user endpoints."""
    env = service.environment_name(cfg.environment, cfg.local_compute_services)
    app = service.build_app(user_dir(), env, login_flow_manager=prompt)
    try:
        data = identity_client(app).userinfo().data
    except globus_sdk.NetworkError as e:
        raise ServiceUnreachable(f"userinfo: cannot reach the auth service: {e}") from e
    except globus_sdk.GlobusAPIError as e:
        raise AuthError(f"userinfo refused ({e.http_status}): {e.message}") from e
    finally:
        app.close()
    found = data.get("identity_set") if isinstance(data, dict) else None
    ids = {str(i["sub"]) for i in found or [] if isinstance(i, dict) and i.get("sub")}
    if isinstance(data, dict) and data.get("sub"):
        ids.add(str(data["sub"]))
    if not ids:
        raise AuthError("userinfo named no identity: nobody could use this endpoint")
    return frozenset(ids)


def _mapping_authorizer(cfg: ManagerConfig) -> Authorizer | None:
    """Root with an identity mapping file maps identities to local users (read it now, so a
    broken file fails `start`); otherwise None: the owner's identities decide."""
    mapping = cfg.identity_mapping_config_path
    if mapping is None:
        return None
    if not is_privileged():
        log.warning("identity_mapping_config_path is ignored: only a root manager can switch users")
        return None
    log.info("user endpoints run as the local users %s maps identities to", mapping)
    return MappingAuthorizer(MappingFile(mapping))


def prepare(
    loaded: Loaded, endpoint_uuid: str | None, notify: Notifier
) -> tuple[service.Registration, Authorizer]:
    """Check the config and template, register, and decide who may start user endpoints."""
    cfg = _check_manager(loaded)
    metadata = _manager_metadata(loaded, cfg)
    authorizer = _mapping_authorizer(cfg)
    reg = register(loaded, endpoint_uuid, notify, metadata)
    if reg.command_queue_info is None:
        raise ServiceError("register: the service gave no command queue for a manager endpoint")
    if authorizer is None:
        ids = owner_identities(cfg, notify.login_prompt())
        log.info("user endpoints run as %s, for the identities %s", getpass.getuser(), sorted(ids))
        authorizer = OwnerAuthorizer(ids)
    return reg, authorizer


def run(loaded: Loaded, reg: service.Registration, authorizer: Authorizer, lock: PidLock) -> None:
    cfg = loaded.config
    assert isinstance(cfg, ManagerConfig)
    assert reg.command_queue_info is not None
    launcher = os.environ.get(LAUNCHER_ENV, "fork")
    settings = ManagerSettings(
        endpoint_id=reg.endpoint_id,
        ep_dir=loaded.ep_dir,
        config=cfg,
        commands=QueueInfo.from_service(reg.command_queue_info, cfg.amqp_port),
        heartbeats=QueueInfo.from_service(reg.heartbeat_queue_info, cfg.amqp_port),
        privileged=is_privileged(),
        launcher=launcher if launcher in ("fork", "exec") else "fork",
    )
    manager = Manager(settings, authorizer, pid_lock=lock)
    manager.install_signal_handlers()
    manager.run()
