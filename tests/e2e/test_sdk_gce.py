"""The official SDK 4.19 → our web service → our endpoint running GlobusComputeEngine.

The endpoint is configured through config.yaml exactly as a user would, with Parsl's
HighThroughputExecutor on a LocalProvider block (loopback only).
"""

from __future__ import annotations

import pytest

from devstack.stack import Stack, local_gce_engine
from tests.e2e.conftest import SdkRunner

CONFIG = "display_name: gce\nheartbeat_period: 5\nengine:\n" + local_gce_engine()

PRELUDE = """
import json
from globus_compute_sdk import Executor
from globus_compute_sdk.errors import TaskExecutionFailed
EP = {ep!r}
"""


@pytest.fixture(scope="module")
def gce_endpoint(stack: Stack) -> str:
    stack.configure_endpoint("gce", CONFIG)
    return stack.start_endpoint("gce")


def test_results_round_trip_through_htex(gce_endpoint: str, run_sdk: SdkRunner) -> None:
    out = run_sdk(
        PRELUDE.format(ep=gce_endpoint)
        + """
import os
def add(a, b=0):
    return a + b
def where():
    import os
    return os.environ.get("PARSL_WORKER_RANK")
with Executor(endpoint_id=EP) as ex:
    sums = [f.result(timeout=120) for f in [ex.submit(add, i, b=i) for i in range(20)]]
    rank = ex.submit(where).result(timeout=60)
print(json.dumps({"sums": sums, "rank": rank}))
"""
    )
    assert out["sums"] == [2 * i for i in range(20)]
    assert out["rank"] in ("0", "1")  # ran inside a Parsl worker


def test_remote_exception_through_htex(gce_endpoint: str, run_sdk: SdkRunner) -> None:
    out = run_sdk(
        PRELUDE.format(ep=gce_endpoint)
        + """
def boom():
    raise ValueError("kaboom from a Parsl worker")
with Executor(endpoint_id=EP) as ex:
    try:
        ex.submit(boom).result(timeout=60)
        res = {"raised": None}
    except TaskExecutionFailed as e:
        res = {"raised": type(e).__name__, "text": str(e)}
print(json.dumps(res))
"""
    )
    assert out["raised"] == "TaskExecutionFailed"
    assert "ValueError: kaboom from a Parsl worker" in out["text"]
    assert "in boom" in out["text"]
