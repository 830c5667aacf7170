"""`start`: load config, take the lock, register, and run the endpoint in the foreground."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from endpoint import service
from endpoint.config import EndpointConfig, load_config
from endpoint.engines import build_engine
from endpoint.errors import ConfigError, LifecycleError
from endpoint.lifecycle import (
    CONFIG_FILE,
    PidLock,
    clean_stale_pid,
    endpoint_dir,
    read_endpoint_id,
    user_dir,
    write_endpoint_id,
)
from endpoint.runtime import EndpointRuntime, QueueInfo

log = logging.getLogger(__name__)

DEFAULT_CONFIG = """\
# Globus Compute endpoint configuration (container-compute-endpoint).
display_name: null
engine:
  type: ThreadPoolEngine
  max_workers: 4
heartbeat_period: 30
"""


def configure(name: str) -> Path:
    ep_dir = endpoint_dir(name)
    cfg = ep_dir / CONFIG_FILE
    if cfg.exists():
        raise LifecycleError(f"endpoint {name!r} is already configured at {cfg}")
    ep_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(ep_dir, 0o700)
    cfg.write_text(DEFAULT_CONFIG)
    return cfg


def start(name: str, endpoint_uuid: str | None = None) -> None:
    ep_dir = endpoint_dir(name)
    cfg_path = ep_dir / CONFIG_FILE
    if not cfg_path.exists():
        raise LifecycleError(
            f"endpoint {name!r} is not configured ({cfg_path} missing); "
            f"run: compute-endpoint configure {name}"
        )
    config, text = load_config(cfg_path)
    if config.mode != "single_user":
        raise ConfigError(f"{cfg_path}: mode {config.mode!r} is not supported by this build yet")
    clean_stale_pid(ep_dir)
    lock = PidLock.acquire(ep_dir)
    try:
        _run(name, ep_dir, config, text, lock, endpoint_uuid)
    finally:
        lock.release()


def _run(
    name: str,
    ep_dir: Path,
    config: EndpointConfig,
    text: str,
    lock: PidLock,
    endpoint_uuid: str | None,
) -> None:
    engine = build_engine(dict(config.engine))
    env = service.environment_name(config.environment, config.local_compute_services)
    svc = service.ComputeService(service.build_app(user_dir(), env), service.service_url(env))
    svc.version_check()
    known_id = endpoint_uuid or read_endpoint_id(ep_dir)
    reg = svc.register(known_id, service.registration_body(name, text, config))
    write_endpoint_id(ep_dir, reg.endpoint_id)
    log.info("registered endpoint %s with %s", reg.endpoint_id, svc.base_url)
    port = config.amqp_port
    runtime = EndpointRuntime(
        endpoint_id=reg.endpoint_id,
        ep_dir=ep_dir,
        engine=engine,
        tasks=QueueInfo.from_service(reg.task_queue_info, port),
        results=QueueInfo.from_service(reg.result_queue_info, port),
        heartbeats=QueueInfo.from_service(reg.heartbeat_queue_info, port),
        heartbeat_period=config.heartbeat_period,
        prefetch_count=config.prefetch_count,
        allowed_functions={str(f) for f in config.allowed_functions}
        if config.allowed_functions is not None
        else None,
        max_retries_on_system_failure=int(config.engine.get("max_retries_on_system_failure", 0)),
        config_text=text,
        pid_lock=lock,
    )
    runtime.install_signal_handlers()
    runtime.run()
