"""The official SDK 4.19 → our web service → OUR manager endpoint and its user endpoints.

`Executor(endpoint_id=MANAGER, user_endpoint_config={...})`: each distinct config runs in its
own user endpoint, started from the manager's template on the first task that needs it.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.stack import Stack
from endpoint.manager.audit import AUDIT_FILE
from endpoint.manager.audit import read as read_audit
from tests.e2e.conftest import SdkRunner
from webservice.commands import uep_id

#: Used by our manager and by the official one in `test_manager_side_by_side.py`.
TEMPLATE = """\
engine:
  type: ThreadPoolEngine
  max_workers: {{ workers|default(2) }}
heartbeat_period: 5
idle_heartbeats_soft: {{ idle|default(0) }}
display_name: {{ label|default('"uep"') }}
{% if greeting is defined %}
endpoint_setup: echo {{ greeting|shell_escape }} > {{ out|shell_escape }}
{% endif %}
"""
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "workers": {"type": "integer", "minimum": 1, "maximum": 4},
        "idle": {"type": "integer", "minimum": 0},
        "label": {"type": "string"},
        "greeting": {"type": "string"},
        "out": {"type": "string"},
        "nonce": {"type": "string"},
    },
    "additionalProperties": False,
}
MANAGER = "ours-manager"

PRELUDE = """
import json, os
from globus_compute_sdk import Executor
EP = {ep!r}
def where():
    import os
    return {{"pid": os.getpid(), "name": os.environ.get("GLOBUS_COMPUTE_ENDPOINT_NAME")}}
def add(a, b=0):
    return a + b
def run(cfg, fn, *args, **kwargs):
    try:
        with Executor(endpoint_id=EP, user_endpoint_config=cfg) as ex:
            return {{"ok": ex.submit(fn, *args, **kwargs).result(timeout=120)}}
    except Exception as e:
        return {{"error": type(e).__name__, "text": str(e)}}
"""


def configure_manager(stack: Stack, name: str) -> Path:
    ep_dir = stack.configure_endpoint(
        name, f"display_name: {name}\nheartbeat_period: 5\nemail: tester@example.org\n"
    )
    (ep_dir / "user_config_template.yaml.j2").write_text(TEMPLATE)
    (ep_dir / "user_config_schema.json").write_text(json.dumps(SCHEMA))
    # As root the manager starts user endpoints with a clean environment (as upstream).
    (ep_dir / "user_environment.yaml").write_text(
        f"GLOBUS_COMPUTE_USER_DIR: {stack.root / 'ours-uep-user'}\n"
    )
    return ep_dir


@pytest.fixture(scope="module")
def manager(stack: Stack) -> str:
    configure_manager(stack, MANAGER)
    return stack.start_endpoint(MANAGER)


def audit(stack: Stack, event: str) -> list[dict[str, Any]]:
    rows = read_audit(stack.root / "user" / MANAGER / AUDIT_FILE)
    return [r for r in rows if r["event"] == event]


def nonce() -> str:
    return uuid.uuid4().hex[:8]


def test_two_configs_run_two_user_endpoints_and_the_same_config_reuses_one(
    manager: str, run_sdk: SdkRunner, stack: Stack
) -> None:
    n = nonce()
    out = run_sdk(
        PRELUDE.format(ep=manager)
        + f"""
a = {{"workers": 1, "nonce": {n!r}}}
b = {{"workers": 2, "nonce": {n!r}}}
print(json.dumps([run(a, where), run(b, where), run(a, where), run(b, add, 40, b=2)]))
"""
    )
    first_a, first_b, again_a, added = (o["ok"] for o in out)
    assert first_a["pid"] != first_b["pid"]
    assert again_a == first_a and added == 42
    assert first_a["name"].startswith("uep.") and first_a["name"] != first_b["name"]
    started = {r["pid"] for r in audit(stack, "start")}
    assert {first_a["pid"], first_b["pid"]} <= started


def test_a_config_failing_the_schema_gives_the_submitter_a_clear_error(
    manager: str, run_sdk: SdkRunner
) -> None:
    out = run_sdk(
        PRELUDE.format(ep=manager)
        + f"""
print(json.dumps(run({{"workers": "many", "nonce": {nonce()!r}}}, add, 1)))
"""
    )
    assert out["error"] == "TaskExecutionFailed"
    assert "does not match the endpoint's schema" in out["text"]
    assert "workers: 'many' is not of type 'integer'" in out["text"]


def test_an_injection_attempt_renders_inert(
    manager: str, run_sdk: SdkRunner, stack: Stack, tmp_path: Path
) -> None:
    cfg = {
        "label": 'x"\nidle_heartbeats_soft: 1\nengine: {type: Bogus}',
        "greeting": "hi; touch pwned",
        "out": str(tmp_path / "greeting.txt"),
        "nonce": nonce(),
    }
    out = run_sdk(PRELUDE.format(ep=manager) + f"\nprint(json.dumps(run({cfg!r}, add, 1, b=1)))")
    assert out == {"ok": 2}
    assert (tmp_path / "greeting.txt").read_text() == "'hi; touch pwned'\n"
    assert not list(stack.root.rglob("pwned")) and not list(tmp_path.rglob("pwned"))
    uep = uep_id(manager, stack.client_id, cfg)
    deadline = time.monotonic() + 30
    while "config_raw" not in (details := stack.get(f"/v2/endpoints/{uep}/status")["details"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    rendered = yaml.safe_load(details["config_raw"])
    assert rendered["display_name"] == cfg["label"]
    assert (
        rendered["idle_heartbeats_soft"] == 0 and rendered["engine"]["type"] == "ThreadPoolEngine"
    )


def test_an_idle_user_endpoint_exits_and_a_new_task_starts_it_again(
    manager: str, run_sdk: SdkRunner, stack: Stack
) -> None:
    cfg = {"idle": 1, "nonce": nonce()}
    first = run_sdk(PRELUDE.format(ep=manager) + f"\nprint(json.dumps(run({cfg!r}, where)))")
    pid = first["ok"]["pid"]
    deadline = time.monotonic() + 60
    while not any(r["pid"] == pid for r in audit(stack, "stop")):
        assert time.monotonic() < deadline, "the idle user endpoint did not exit"
        time.sleep(0.5)
    (stop,) = [r for r in audit(stack, "stop") if r["pid"] == pid]
    assert stop["exit_status"] == 0
    second = run_sdk(PRELUDE.format(ep=manager) + f"\nprint(json.dumps(run({cfg!r}, where)))")
    assert second["ok"]["pid"] != pid and second["ok"]["name"] == first["ok"]["name"]
