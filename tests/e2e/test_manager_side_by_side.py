"""The OFFICIAL 4.19 endpoint as a manager and ours, side by side behind our web service:
the same template and schema, the same tasks, the same results."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import Stack
from tests.e2e.conftest import SdkRunner
from tests.e2e.test_manager_endpoint import PRELUDE, SCHEMA, TEMPLATE, configure_manager

OFFICIAL = "official-manager"
OURS = "ours-twin"

TASKS = """
def boom():
    raise ValueError("kaboom from a user endpoint")
def env(name):
    import os
    return os.environ.get(name)
def read(path):
    with open(path) as f:
        return f.read()
n = {nonce!r}
out = {{
    "add": run({{"workers": 1, "nonce": n}}, add, 40, b=2),
    "named": run({{"workers": 2, "nonce": n}}, env, "GLOBUS_COMPUTE_ENDPOINT_NAME"),
    "setup": run({{"greeting": "hi; touch pwned", "out": {out!r}, "nonce": n}}, read, {out!r}),
    "boom": run({{"workers": 1, "nonce": n}}, boom),
    "schema": run({{"workers": 9, "nonce": n}}, add, 1),
    "python": run({{"workers": 1, "nonce": n}}, env, "GC_USER_PYTHON_VERSION"),
}}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def twins(stack: Stack, peer_python: Path) -> Iterator[dict[str, str]]:
    official = stack.start_official_endpoint(peer_python.parent, OFFICIAL, TEMPLATE)
    # Read at every user endpoint start, so writing it now is in time.
    schema = stack.root / "official-user" / OFFICIAL / "user_config_schema.json"
    schema.write_text(json.dumps(SCHEMA))
    configure_manager(stack, OURS)
    ours = stack.start_endpoint(OURS)
    try:
        yield {"official": official, "ours": ours}
    finally:
        stack.stop_official_endpoint(OFFICIAL)


def run_tasks(run_sdk: SdkRunner, endpoint_id: str, out: Path) -> dict[str, Any]:
    snippet = PRELUDE.format(ep=endpoint_id) + TASKS.format(nonce=uuid.uuid4().hex, out=str(out))
    result: dict[str, Any] = run_sdk(snippet)
    return result


def test_same_template_same_tasks_same_results(
    twins: dict[str, str], run_sdk: SdkRunner, tmp_path: Path
) -> None:
    got = {who: run_tasks(run_sdk, ep, tmp_path / f"{who}.txt") for who, ep in twins.items()}
    official, ours = got["official"], got["ours"]
    assert official["add"] == ours["add"] == {"ok": 42}
    for results in (official, ours):
        assert results["named"]["ok"].startswith("uep.")
        assert results["setup"] == {"ok": "'hi; touch pwned'\n"}
        assert results["boom"]["error"] == "TaskExecutionFailed"
        assert "ValueError: kaboom from a user endpoint" in results["boom"]["text"]
        assert results["schema"]["error"] == "TaskExecutionFailed"
        assert "9 is greater than the maximum of 4" in results["schema"]["text"]
    assert official["python"] == ours["python"]
    assert (tmp_path / "official.txt").read_text() == (tmp_path / "ours.txt").read_text()
    assert not list(tmp_path.rglob("pwned"))
