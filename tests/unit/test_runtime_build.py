"""One way to build a runtime: `compute-endpoint start` and a manager-started user endpoint get
the same settings from the same config (issue 12's drift bug 1: the manager's copy of the
wiring ignored `max_task_size` and gave no engine factory, so a broken engine was never
replaced in multi-user deployments)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from endpoint.admin import service, start
from endpoint.admin.register import Loaded
from endpoint.amqp.queues import AmqpCreds
from endpoint.config.rendered import validate_rendered
from endpoint.host.pidlock import PidLock
from endpoint.protocol.pipe import LaunchDoc
from endpoint.runtime import managed
from endpoint.runtime.adapter import EndpointRuntime
from endpoint.runtime.build import new_engine

FUNCTION = str(uuid.UUID(int=7))
CONFIG = f"""\
engine:
  type: ThreadPoolEngine
  max_workers: 3
  max_retries_on_system_failure: 2
max_task_size: 12345
heartbeat_period: 7
heartbeat_threshold: 60
prefetch_count: 17
idle_heartbeats_soft: 4
idle_heartbeats_hard: 9
amqp_port: 5671
allowed_functions: ["{FUNCTION}"]
"""


def queue_infos(endpoint_id: str) -> dict[str, Any]:
    def info(name: str) -> dict[str, Any]:
        return {"connection_url": "amqp://u:p@127.0.0.1:5672/", "queue": f"{endpoint_id}.{name}"}

    return {
        "endpoint_id": endpoint_id,
        "task_queue_info": info("tasks"),
        "result_queue_info": info("results"),
        "heartbeat_queue_info": info("heartbeats"),
    }


def direct(tmp_path: Path, endpoint_id: str) -> EndpointRuntime:
    ep_dir = tmp_path / "direct"
    ep_dir.mkdir()
    cfg = validate_rendered(CONFIG)
    loaded = Loaded("direct", ep_dir, cfg, CONFIG, ep_dir / "config.yaml")
    run = start._Run(loaded, PidLock.acquire(ep_dir))
    run.engine = new_engine(cfg)
    q = queue_infos(endpoint_id)
    reg = service.Registration(
        endpoint_id, q["task_queue_info"], q["result_queue_info"], q["heartbeat_queue_info"],
        None, {},
    )  # fmt: skip
    return start.endpoint_runtime(run, reg)


def under_manager(tmp_path: Path, endpoint_id: str) -> EndpointRuntime:
    ep_dir = tmp_path / "managed"
    ep_dir.mkdir()
    doc = LaunchDoc("managed", endpoint_id, CONFIG, AmqpCreds.parse(queue_infos(endpoint_id)))
    prepared = managed.Prepared(doc, ep_dir, validate_rendered(CONFIG), PidLock.acquire(ep_dir))
    return managed.managed_runtime(prepared)


def test_both_ways_to_start_a_user_endpoint_build_the_same_runtime(tmp_path: Path) -> None:
    endpoint_id = str(uuid.uuid4())
    a, b = direct(tmp_path, endpoint_id), under_manager(tmp_path, endpoint_id)
    assert a.settings == b.settings
    assert a.queues == b.queues
    assert type(a.engine) is type(b.engine)
    # What the manager's copy of the wiring used to drop:
    for rt in (a, b):
        assert rt.ix.max_task_size == 12345
        assert rt.engine_factory is not None
        assert type(rt.engine_factory()) is type(rt.engine)
        assert rt.ix.allowed_functions == {FUNCTION}
        assert rt.heartbeat_period == 7
    # amqp_port rewrote every queue's URL, on both paths.
    assert {q.connection_url for q in (a.queues.tasks, a.queues.results, a.queues.heartbeats)} == {
        "amqp://u:p@127.0.0.1:5671/"
    }


def test_a_managers_allowed_functions_win_over_the_rendered_configs(tmp_path: Path) -> None:
    endpoint_id = str(uuid.uuid4())
    ep_dir = tmp_path / "managed"
    ep_dir.mkdir()
    other = str(uuid.UUID(int=8))
    creds = AmqpCreds.parse(queue_infos(endpoint_id))
    doc = LaunchDoc("m", endpoint_id, CONFIG, creds, allowed_functions=[other])
    prepared = managed.Prepared(doc, ep_dir, validate_rendered(CONFIG), PidLock.acquire(ep_dir))
    assert managed.managed_runtime(prepared).ix.allowed_functions == {other}
