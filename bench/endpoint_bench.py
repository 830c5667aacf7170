"""Ours vs the official endpoint, same web service and broker, one run.

For each engine (ThreadPool / ProcessPool, 2 workers) and each endpoint it measures:
(a) service-side latency p50 of sequential no-op calls: submit request reaching our web service
    → result published to the task group's queue (the service records both instants);
(b) the same calls' latency as the official SDK sees it;
(c) throughput of a burst of no-op tasks from one Executor.
A zero-work endpoint runs first: its figures are the floor the shared parts impose.
Prints `ENGINE.FIGURE ours=X official=Y ratio=Z` lines (ratio = ours/official for throughput,
official/ours for latencies, so > 1 always means we are better).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import echo_endpoint  # type: ignore[import-not-found]  # bench/ is on sys.path as a script

from webservice.stack import Stack

HERE = Path(__file__).resolve().parent
ENGINES = {"thread": "ThreadPoolEngine", "process": "ProcessPoolEngine"}


def our_config(engine: str) -> str:
    return f"engine:\n  type: {engine}\n  max_workers: 2\nheartbeat_period: 30\n"


def official_template(engine: str) -> str:
    return (
        f"engine:\n  type: {engine}\n  max_workers: 2\nheartbeat_period: 30\n"
        "idle_heartbeats_soft: 0\n"
    )


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


FIGURES = ("service_latency_p50_ms", "sdk_latency_p50_ms", "noop_throughput_per_s")


def summary(result: dict[str, Any]) -> str:
    return " ".join(f"{k}={result[k]:.2f}" for k in FIGURES)


def line(name: str, ours: float, official: float, higher_is_better: bool) -> str:
    ratio = ours / official if higher_is_better else official / ours
    return f"{name} ours={ours:.2f} official={official:.2f} ratio={ratio:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--peer-python", required=True)
    p.add_argument("--sequential", type=int, default=200)
    p.add_argument("--burst", type=int, default=2000)
    p.add_argument("--engines", default="thread,process")
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
            stack.configure_endpoint(f"bench-{short}", our_config(engine))
            ours_id = stack.start_endpoint(f"bench-{short}")
            ours = drive(stack, args.peer_python, ours_id, args)
            stack.stop_endpoint(f"bench-{short}")
            print(f"# {short} ours: {summary(ours)}", flush=True)
            off_id = stack.start_official_endpoint(
                peer_bin, f"off-{short}", official_template(engine)
            )
            official = drive(stack, args.peer_python, off_id, args)
            stack.stop_official_endpoint(f"off-{short}")
            print(f"# {short} official: {summary(official)}", flush=True)
            for fig, better_high in (
                ("service_latency_p50_ms", False),
                ("sdk_latency_p50_ms", False),
                ("noop_throughput_per_s", True),
            ):
                print(line(f"{short}.{fig}", ours[fig], official[fig], better_high), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
