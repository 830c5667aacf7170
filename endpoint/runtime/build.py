"""The one way to build a user endpoint's runtime from its config.

Used by `compute-endpoint start` (`admin/start.py`) and by a user endpoint a manager started
(`runtime/managed.py`); `tests/unit/test_runtime_build.py` checks that both get the same
settings, the engine factory that replaces a broken engine included.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from endpoint.amqp.pool import SessionFactory
from endpoint.amqp.queues import AmqpCreds
from endpoint.amqp.session import AmqpSession
from endpoint.config import EndpointConfig
from endpoint.engines.base import Engine
from endpoint.engines.build import build_engine
from endpoint.host.pidlock import PidLock
from endpoint.runtime.adapter import EndpointRuntime
from endpoint.runtime.metrics import metrics_for
from endpoint.runtime.settings import RuntimeSettings


def new_engine(cfg: EndpointConfig) -> Engine:
    """Built, not started: engines start no process or thread before `start` (fork-safe)."""
    return build_engine(cfg.engine)


def build_runtime(
    *,
    endpoint_id: str,
    name: str,
    ep_dir: Path,
    config: EndpointConfig,
    config_text: str,
    creds: AmqpCreds,
    pid_lock: PidLock | None,
    engine: Engine | None = None,
    allowed_functions: list[str] | None = None,
    sessions: SessionFactory = AmqpSession,
) -> EndpointRuntime:
    """`creds`: the registration's (or a start command's) three queues; `engine`: one
    already built from this config (else built here); `allowed_functions`: a manager's list,
    which wins over the config's."""
    settings = RuntimeSettings.from_config(config, allowed_functions)
    return EndpointRuntime(
        endpoint_id=endpoint_id,
        ep_dir=ep_dir,
        engine=engine if engine is not None else build_engine(config.engine),
        engine_factory=partial(build_engine, config.engine),
        queues=creds.queues(settings.amqp_port),
        settings=settings,
        config_text=config_text,
        pid_lock=pid_lock,
        title=f"Globus Compute Endpoint ({endpoint_id}, {name})",
        sessions=sessions,
        metrics=metrics_for(config.metrics_address, config.metrics_port),
    )
