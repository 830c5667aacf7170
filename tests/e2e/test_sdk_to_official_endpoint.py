"""The official SDK 4.19 → our web service → the OFFICIAL endpoint 4.19 (a core endpoint that
spawns a ThreadPoolEngine user endpoint on our `cmd_start_endpoint`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import Stack
from tests.e2e.conftest import SdkRunner

TEMPLATE = """\
engine:
  type: ThreadPoolEngine
  max_workers: 2
heartbeat_period: 5
idle_heartbeats_soft: 0
"""


@pytest.fixture(scope="module")
def official_endpoint(stack: Stack, peer_python: Path) -> Iterator[str]:
    endpoint_id = stack.start_official_endpoint(peer_python.parent, "official", TEMPLATE)
    try:
        yield endpoint_id
    finally:
        stack.stop_official_endpoint("official")


def test_one_call_returns_through_the_official_endpoint(
    official_endpoint: str, run_sdk: SdkRunner
) -> None:
    out = run_sdk(f"""
import json
from globus_compute_sdk import Executor
def add(a, b=0):
    return a + b
with Executor(endpoint_id={official_endpoint!r}) as ex:
    fut = ex.submit(add, 40, b=2)
    print(json.dumps({{"result": fut.result(timeout=120)}}))
""")
    assert out == {"result": 42}
