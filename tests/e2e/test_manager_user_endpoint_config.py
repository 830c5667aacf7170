"""A user endpoint a manager starts honours its whole config, like a directly started one.

Issue 12's drift bug 1: the manager-started runtime was wired by a second copy of the code that
dropped `max_task_size` and the engine factory, so in every multi-user deployment a dead HTEX
interchange was never replaced (every later task failed) and the task size limit was the
default. The official SDK 4.19 submits through our web service to OUR manager.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import psutil
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import SdkRunner
from tests.e2e.test_manager_endpoint import PRELUDE
from tests.processes import descendants_running

TEMPLATE = """\
engine:
{% if htex is defined %}
  type: GlobusComputeEngine
  max_workers_per_node: 1
  address: 127.0.0.1
  heartbeat_period: 1
  provider: {type: LocalProvider, init_blocks: 1, min_blocks: 0, max_blocks: 1}
  job_status_kwargs: {strategy_period: 0.5}
{% else %}
  type: ThreadPoolEngine
  max_workers: 1
{% endif %}
heartbeat_period: 5
max_task_size: {{ max_task_size|default(10485760) }}
"""
SCHEMA = {
    "type": "object",
    "properties": {
        "htex": {"type": "boolean"},
        "max_task_size": {"type": "integer", "minimum": 1},
        "nonce": {"type": "string"},
    },
    "additionalProperties": False,
}
MANAGER = "ours-manager-config"


@pytest.fixture(scope="module")
def manager(stack: Stack) -> str:
    ep_dir = stack.configure_endpoint(
        MANAGER, f"display_name: {MANAGER}\nheartbeat_period: 5\nemail: tester@example.org\n"
    )
    (ep_dir / "user_config_template.yaml.j2").write_text(TEMPLATE)
    (ep_dir / "user_config_schema.json").write_text(json.dumps(SCHEMA))
    (ep_dir / "user_environment.yaml").write_text(f"GLOBUS_COMPUTE_USER_DIR: {uep_root(stack)}\n")
    return stack.start_endpoint(MANAGER)


def uep_root(stack: Stack) -> Path:
    return stack.root / "config-uep-user"


def nonce() -> str:
    return uuid.uuid4().hex[:8]


def interchanges_under(pid: int) -> list[psutil.Process]:
    return descendants_running("interchange", pid)


def test_a_manager_started_user_endpoint_honours_max_task_size(
    manager: str, run_sdk: SdkRunner
) -> None:
    cfg = {"max_task_size": 4000, "nonce": nonce()}
    out = run_sdk(
        PRELUDE.format(ep=manager)
        + f"""
small = run({cfg!r}, add, 40, b=2)
big = run({cfg!r}, add, "x" * 20000, b="y")
print(json.dumps([small, big]))
"""
    )
    small, big = out
    assert small == {"ok": 42}
    assert big["error"] == "TaskExecutionFailed", big
    assert "limit of 4000 bytes" in big["text"], big


def test_a_killed_interchange_under_a_manager_is_replaced_and_later_tasks_succeed(
    manager: str, run_sdk: SdkRunner, stack: Stack
) -> None:
    cfg = {"htex": True, "nonce": nonce()}
    first = run_sdk(PRELUDE.format(ep=manager) + f"\nprint(json.dumps(run({cfg!r}, where)))")
    name = first["ok"]["name"]
    manager_pid = stack.procs[f"endpoint:{MANAGER}"].pid
    (interchange,) = interchanges_under(manager_pid)
    interchange.send_signal(signal.SIGKILL)
    log = uep_root(stack) / name / "endpoint.log"
    deadline = time.monotonic() + 120
    while "starting a new one" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"the engine was not replaced; see {log}"
        time.sleep(0.5)
    later = run_sdk(
        PRELUDE.format(ep=manager)
        + f"\nprint(json.dumps([run({cfg!r}, add, 40, b=2), run({cfg!r}, where)]))"
    )
    assert later[0] == {"ok": 42}, later
    assert later[1]["ok"]["name"] == name  # the same user endpoint, with a new engine
    assert len(interchanges_under(manager_pid)) == 1
