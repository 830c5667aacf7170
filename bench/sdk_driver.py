"""Runs inside the official SDK's venv (a test peer): the client side of the benchmark.

Prints one JSON document: the task ids and SDK-side latencies of sequential no-op calls, and
the wall time of a burst of no-op tasks from one Executor.
"""

import argparse
import json
import statistics
import sys
import time
from typing import Any

from globus_compute_sdk import Executor


def noop() -> None:
    return None


def first_result() -> None:
    """Print `ready`, read an endpoint id from stdin, time one call: start-to-first-result.

    The SDK is imported before the endpoint starts, so its import time is not charged to it.
    """
    print("ready", flush=True)
    endpoint_id = sys.stdin.readline().strip()
    with Executor(endpoint_id=endpoint_id) as ex:
        ex.submit(noop).result(timeout=600)
        print(json.dumps({"first_result_unix": time.time()}), flush=True)


def main() -> None:
    if sys.argv[1:] == ["--first-result"]:
        return first_result()
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint-id", required=True)
    p.add_argument("--sequential", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--burst", type=int, default=2000)
    a = p.parse_args()
    out: dict[str, Any] = {}
    with Executor(endpoint_id=a.endpoint_id) as ex:
        ex.api_burst_limit = 10**9
        for _ in range(a.warmup):
            ex.submit(noop).result(timeout=120)
        lat, ids = [], []
        for _ in range(a.sequential):
            t0 = time.perf_counter()
            fut = ex.submit(noop)
            fut.result(timeout=120)
            lat.append((time.perf_counter() - t0) * 1000)
            ids.append(fut.task_id)
        out["task_group_id"] = str(ex.task_group_id)
        out["sequential_task_ids"] = ids
        out["sdk_latency_p50_ms"] = statistics.median(lat) if lat else None
    with Executor(endpoint_id=a.endpoint_id) as ex:
        ex.api_burst_limit = 10**9
        ex.submit(noop).result(timeout=120)
        t0 = time.perf_counter()
        futs = [ex.submit(noop) for _ in range(a.burst)]
        for f in futs:
            f.result(timeout=600)
        out["burst_seconds"] = burst_s = time.perf_counter() - t0
        out["noop_throughput_per_s"] = a.burst / burst_s
    print(json.dumps(out))


if __name__ == "__main__":
    main()
