"""What `start` does before anything runs: load the config, take the lock, register.

Shared by a user endpoint's start (`admin/start.py`) and a manager's (`admin/start_manager.py`).
The CLI supplies a `Notifier` so that nothing here prints.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from endpoint.admin import service
from endpoint.admin.auth import LoginPrompt, identity_client
from endpoint.config import EndpointConfig, ManagerConfig, load_endpoint_dir
from endpoint.errors import AlreadyRunning
from endpoint.host.dirs import (
    read_endpoint_id,
    resolve,
    started_paths,
    user_dir,
    write_endpoint_id,
)
from endpoint.host.pidlock import PidLock, Probe, State, clean_stale_pid, probe

log = logging.getLogger(__name__)


class Notifier(Protocol):
    """What `start` tells the person at the terminal (implemented by the CLI)."""

    def cleaned_stale(self, ep_dir: Path, pid: int | None) -> None: ...
    def registered(self, name: str, endpoint_id: str) -> None: ...
    def login_prompt(self) -> LoginPrompt | None: ...


@dataclass(frozen=True)
class Loaded:
    name: str
    ep_dir: Path
    config: EndpointConfig | ManagerConfig
    text: str
    path: Path

    @property
    def log_path(self) -> Path:
        """`paths.endpoint_log`, else $GLOBUS_COMPUTE_LOG_PATH, else `endpoint.log` in
        `paths.endpoint_dir` or the endpoint's directory (`dirs.run_paths`)."""
        paths = self.config.paths if isinstance(self.config, EndpointConfig) else None
        found = started_paths(
            self.ep_dir,
            paths.endpoint_dir if paths else None,
            paths.endpoint_log if paths else None,
            os.environ,
        )
        return found.log

    @property
    def user_config(self) -> EndpointConfig:
        assert isinstance(self.config, EndpointConfig)
        return self.config


def load(target: str | None) -> Loaded:
    """Resolve NAME_OR_UUID and load its config: a user endpoint's or a manager's."""
    ep_dir = resolve(target)
    cfg, text, path = load_endpoint_dir(ep_dir)
    return Loaded(ep_dir.name, ep_dir, cfg, text, path)


def _already_running(ep_dir: Path, found: Probe) -> AlreadyRunning:
    if found.state is State.RUNNING:
        return AlreadyRunning(
            f"endpoint {ep_dir.name} is already running (pid {found.pid}); stop it first"
        )
    return AlreadyRunning(
        f"endpoint {ep_dir.name} (pid {found.pid}) holds its lock but has not touched "
        f"{ep_dir / 'daemon.pid'} for {found.age:.0f}s (hung?); run: compute-endpoint stop "
        f"{ep_dir.name}"
    )


def claim(ep_dir: Path, notify: Notifier) -> PidLock:
    """Take the endpoint lock, cleaning a pid file left by a crash or a reboot."""
    found = probe(ep_dir)
    if found.locked:
        raise _already_running(ep_dir, found)
    if found.stale_file and clean_stale_pid(ep_dir):
        notify.cleaned_stale(ep_dir, found.pid)
    lock = PidLock.acquire(ep_dir)
    lock.start_touching()
    return lock


def service_for(cfg: Any, prompt: LoginPrompt | None) -> service.ComputeService:
    env = service.environment_name(
        getattr(cfg, "environment", None), bool(getattr(cfg, "local_compute_services", False))
    )
    app = service.build_app(user_dir(), env, login_flow_manager=prompt)
    identity_client(app)
    return service.ComputeService(app, service.service_url(env))


def is_privileged() -> bool:
    return os.geteuid() == 0


def register(
    loaded: Loaded,
    endpoint_uuid: str | None,
    notify: Notifier,
    extra_metadata: dict[str, Any] | None = None,
) -> service.Registration:
    svc = service_for(loaded.config, notify.login_prompt())
    svc.version_check()
    known_id = endpoint_uuid or read_endpoint_id(loaded.ep_dir)
    if extra_metadata is None:
        body = service.registration_body(loaded.name, loaded.text, loaded.config)
    else:
        body = service.registration_body(loaded.name, loaded.text, loaded.config, mode="manager")
        body["metadata"].update(extra_metadata)
        if is_privileged():
            body["multi_user"] = True
    reg = svc.register(known_id, body)
    write_endpoint_id(loaded.ep_dir, reg.endpoint_id)
    log.info("registered endpoint %s with %s", reg.endpoint_id, svc.base_url)
    notify.registered(loaded.name, reg.endpoint_id)
    return reg
