"""Ours vs the official endpoint, same web service and broker, one run.

For each engine (ThreadPool / ProcessPool / GlobusComputeEngine on LocalProvider, 2 workers)
and each endpoint it measures:
(a) start-to-first-result: from launching `start` on a configured endpoint to the SDK holding
    the result of its first call (the SDK is imported beforehand);
(b) service-side latency p50 of sequential no-op calls: submit request reaching our web service
    → result published to the task group's queue (the service records both instants);
(c) the same calls' latency as the official SDK sees it;
(d) throughput of a burst of no-op tasks from one Executor;
(e) RSS of the endpoint's whole process tree (workers included) once idle after the run.
A zero-work endpoint runs first: its figures are the floor the shared parts impose.
Prints `ENGINE.FIGURE ours=X official=Y ratio=Z` lines (ratio = ours/official for throughput,
official/ours for latencies and memory, so > 1 always means we are better).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import echo_endpoint  # type: ignore[import-not-found,unused-ignore]  # bench/ is on sys.path as a script
import psutil

from devstack.stack import Stack, local_gce_engine

HERE = Path(__file__).resolve().parent
ENGINES = {"thread": "ThreadPoolEngine", "process": "ProcessPoolEngine", "gce": "GCE"}
IDLE_SETTLE_S = 3.0

# Same engine block for both endpoints: 2 workers on one local block, loopback only.
GCE_BLOCK = "engine:\n" + local_gce_engine(min_blocks=1)


def engine_block(engine: str) -> str:
    if engine == "GCE":
        return GCE_BLOCK
    return f"engine:\n  type: {engine}\n  max_workers: 2\n"


def our_config(engine: str) -> str:
    return engine_block(engine) + "heartbeat_period: 30\n"


def official_template(engine: str) -> str:
    return engine_block(engine) + "heartbeat_period: 30\nidle_heartbeats_soft: 0\n"


def first_result_at(
    peer_python: str, stack: Stack, start: Callable[[], str]
) -> tuple[str, float, float]:
    """Run `start` (returns the endpoint id once online) with an SDK driver waiting for its
    first result: (endpoint id, when `start` was called, when the first result came; unix)."""
    driver = subprocess.Popen(
        [peer_python, str(HERE / "sdk_driver.py"), "--first-result"],
        env=stack.client_env(stack.root / "sdk-user"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert driver.stdin is not None and driver.stdout is not None
    if driver.stdout.readline().strip() != "ready":
        sys.exit("SDK driver did not start")
    t0 = time.time()
    endpoint_id = start()
    driver.stdin.write(endpoint_id + "\n")
    driver.stdin.flush()
    out = json.loads(driver.stdout.readline())
    driver.wait(timeout=60)
    return endpoint_id, t0, float(out["first_result_unix"])


def first_result_s(peer_python: str, stack: Stack, start: Callable[[], str]) -> tuple[str, float]:
    """Run `start` (returns the endpoint id once online) and time it to the first result."""
    endpoint_id, t0, first = first_result_at(peer_python, stack, start)
    return endpoint_id, first - t0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 1e6


def measure(
    stack: Stack, args: argparse.Namespace, proc_name: str, start: Callable[[], str]
) -> dict[str, Any]:
    endpoint_id, first = first_result_s(args.peer_python, stack, start)
    result = drive(stack, args.peer_python, endpoint_id, args)
    result["start_to_first_result_s"] = first
    time.sleep(IDLE_SETTLE_S)
    result["idle_tree_rss_mb"] = tree_rss_mb(stack.procs[proc_name].pid)
    return result


def drive(
    stack: Stack, peer_python: str, endpoint_id: str, args: argparse.Namespace
) -> dict[str, Any]:
    proc = subprocess.run(
        [
            peer_python,
            str(HERE / "sdk_driver.py"),
            "--endpoint-id",
            endpoint_id,
            "--sequential",
            str(args.sequential),
            "--burst",
            str(args.burst),
        ],
        env=stack.client_env(stack.root / "sdk-user"),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"SDK driver failed:\n{proc.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    timings = stack.get(f"/v2/_bench/task_timings?task_group_id={out['task_group_id']}")["tasks"]
    service_ms = [
        (t["result_published_ns"] - t["submit_received_ns"]) / 1e6
        for tid in out["sequential_task_ids"]
        if (t := timings.get(tid)) and t.get("result_published_ns")
    ]
    out["service_latency_p50_ms"] = statistics.median(service_ms)
    return out


# (figure, higher is better)
FIGURES = (
    ("start_to_first_result_s", False),
    ("service_latency_p50_ms", False),
    ("sdk_latency_p50_ms", False),
    ("noop_throughput_per_s", True),
    ("idle_tree_rss_mb", False),
)


def summary(result: dict[str, Any]) -> str:
    return " ".join(f"{k}={result[k]:.2f}" for k, _ in FIGURES if k in result)


def line(name: str, ours: float, official: float, higher_is_better: bool) -> str:
    ratio = ours / official if higher_is_better else official / ours
    return f"{name} ours={ours:.2f} official={official:.2f} ratio={ratio:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--peer-python", required=True)
    p.add_argument("--sequential", type=int, default=200)
    p.add_argument("--burst", type=int, default=2000)
    p.add_argument("--engines", default="thread,process,gce")
    p.add_argument("--no-floor", action="store_true", help="skip the zero-work endpoint run")
    args = p.parse_args()
    peer_bin = Path(args.peer_python).absolute().parent  # not resolve(): keep the venv path
    with Stack() as stack:
        stack.start_service()
        if not args.no_floor:
            echo_id, stop_echo = echo_endpoint.start(stack)
            floor = drive(stack, args.peer_python, echo_id, args)
            stop_echo.set()
            print(
                f"# floor (zero-work endpoint, shared service/broker/SDK): {summary(floor)}",
                flush=True,
            )
        for short in args.engines.split(","):
            engine = ENGINES[short]
            name = f"bench-{short}"
            stack.configure_endpoint(name, our_config(engine))
            ours = measure(stack, args, f"endpoint:{name}", partial(stack.start_endpoint, name))
            stack.stop_endpoint(name)
            print(f"# {short} ours: {summary(ours)}", flush=True)
            off = f"off-{short}"
            official = measure(
                stack,
                args,
                f"official:{off}",
                partial(stack.start_official_endpoint, peer_bin, off, official_template(engine)),
            )
            stack.stop_official_endpoint(off)
            print(f"# {short} official: {summary(official)}", flush=True)
            for fig, better_high in FIGURES:
                print(line(f"{short}.{fig}", ours[fig], official[fig], better_high), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
