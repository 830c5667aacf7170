"""The official SDK 4.19 → our web service → our endpoint, over a real RabbitMQ."""

from __future__ import annotations

from tests.e2e.conftest import SdkRunner

PRELUDE = """
import json
from globus_compute_sdk import Executor
from globus_compute_sdk.errors import TaskExecutionFailed
EP = {ep!r}
"""


def test_args_and_kwargs_round_trip(our_endpoint: str, run_sdk: SdkRunner) -> None:
    out = run_sdk(
        PRELUDE.format(ep=our_endpoint)
        + """
def add(a, b=0):
    return a + b
def describe(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}
with Executor(endpoint_id=EP) as ex:
    r1 = ex.submit(add, 40, b=2).result(timeout=60)
    r2 = ex.submit(describe, 1, "two", [3], k={"v": None}).result(timeout=60)
print(json.dumps([r1, r2]))
"""
    )
    assert out == [42, {"args": [1, "two", [3]], "kwargs": {"k": {"v": None}}}]


def test_exception_comes_back_as_task_execution_failed(
    our_endpoint: str, run_sdk: SdkRunner
) -> None:
    out = run_sdk(
        PRELUDE.format(ep=our_endpoint)
        + """
def boom():
    raise ValueError("kaboom from the remote side")
with Executor(endpoint_id=EP) as ex:
    fut = ex.submit(boom)
    try:
        fut.result(timeout=60)
        res = {"raised": None}
    except TaskExecutionFailed as e:
        res = {"raised": type(e).__name__, "text": str(e)}
print(json.dumps(res))
"""
    )
    assert out["raised"] == "TaskExecutionFailed"
    assert "ValueError: kaboom from the remote side" in out["text"]
    assert "Traceback" in out["text"] and "in boom" in out["text"]


def test_thousand_tasks_in_one_batch(our_endpoint: str, run_sdk: SdkRunner) -> None:
    out = run_sdk(
        PRELUDE.format(ep=our_endpoint)
        + """
import time
from globus_compute_sdk import Client
def square(x):
    return x * x
client = Client()
fid = client.register_function(square)
batch = client.create_batch()
for i in range(1000):
    batch.add(fid, args=(i,))
resp = client.batch_run(EP, batch)
ids = resp["tasks"][fid]
done = {}
deadline = time.monotonic() + 180
while len(done) < len(ids) and time.monotonic() < deadline:
    pending = [t for t in ids if t not in done]
    for start in range(0, len(pending), 500):
        for tid, st in client.get_batch_result(pending[start:start + 500]).items():
            if not st["pending"]:
                done[tid] = st.get("result")
    time.sleep(0.2)
print(json.dumps({"n": len(ids), "ok": [done.get(t) for t in ids] == [i * i for i in range(1000)]}))
""",
        timeout=300,
    )
    assert out == {"n": 1000, "ok": True}


def test_large_argument_of_five_megabytes(our_endpoint: str, run_sdk: SdkRunner) -> None:
    out = run_sdk(
        PRELUDE.format(ep=our_endpoint)
        + """
import hashlib
def digest(blob):
    import hashlib
    return len(blob), hashlib.sha256(blob).hexdigest()
blob = bytes(range(256)) * (5 * 1024 * 1024 // 256)
with Executor(endpoint_id=EP) as ex:
    n, h = ex.submit(digest, blob).result(timeout=120)
print(json.dumps({"ok": n == len(blob) and h == hashlib.sha256(blob).hexdigest()}))
"""
    )
    assert out == {"ok": True}


def test_json_data_result_serializer(our_endpoint: str, run_sdk: SdkRunner) -> None:
    out = run_sdk(
        PRELUDE.format(ep=our_endpoint)
        + """
from globus_compute_sdk.serialize import ComputeSerializer, JSONData
def payload():
    return {"answer": 42, "items": [1, 2, 3]}
ser = ComputeSerializer(strategy_data=JSONData())
with Executor(endpoint_id=EP, serializer=ser, result_serializers=[JSONData()]) as ex:
    r = ex.submit(payload).result(timeout=60)
print(json.dumps(r))
"""
    )
    assert out == {"answer": 42, "items": [1, 2, 3]}
