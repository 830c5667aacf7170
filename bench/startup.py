"""GlobusComputeEngine's start and stop, measured: the figures its tests no longer assert.

A test asserts behaviour (a first result comes back, status() never asks the interchange,
shutdown(wait=False) abandons the running task); how long those take depends on the machine
and its load, so it is printed here instead (`make bench-startup`). Each run starts a fresh
engine on a LocalProvider (one block, one worker) and prints, per run and as medians:

start_to_first_result_s   start() until the first task's result arrives
status_call_us            one status() call, averaged over 100, with two tasks running
shutdown_nowait_s         shutdown(wait=False) with a ten-minute task running, until it returns
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the task helpers live with the engine tests

from endpoint.engines.build import build_engine_from_dict  # noqa: E402
from endpoint.engines.htex.engine import GlobusComputeEngine  # noqa: E402
from tests.unit.test_engines import EPID, Results, add, submission  # noqa: E402

SPEC: dict[str, Any] = {
    "type": "GlobusComputeEngine",
    "address": "127.0.0.1",
    "max_workers_per_node": 2,
    "heartbeat_period": 1,
    "heartbeat_threshold": 3,
    "job_status_kwargs": {"strategy_period": 0.5},
    "provider": {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 0, "max_blocks": 1},
}
STATUS_CALLS = 100
#: Generous: a figure over this is a failure to report, not a measurement.
RESULT_DEADLINE_S = 120.0


def spin(seconds: float) -> str:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    return "done"


def start_to_first_result(run_dir: Path) -> tuple[GlobusComputeEngine, Results, float]:
    results = Results()
    began = time.perf_counter()
    engine = build_engine_from_dict(SPEC)
    assert isinstance(engine, GlobusComputeEngine)
    engine.start(endpoint_id=EPID, run_dir=run_dir, on_result=results)
    sub = submission(add, 1)
    engine.submit(sub)
    results.wait(sub.task_id, timeout=RESULT_DEADLINE_S)
    return engine, results, time.perf_counter() - began


def status_call_us(engine: GlobusComputeEngine) -> float:
    began = time.perf_counter()
    for _ in range(STATUS_CALLS):
        engine.status()
    return (time.perf_counter() - began) / STATUS_CALLS * 1e6


def wait_running(engine: GlobusComputeEngine, tasks: int) -> None:
    deadline = time.monotonic() + RESULT_DEADLINE_S
    while engine.status()["running_tasks"] < tasks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tasks} tasks not running after {RESULT_DEADLINE_S:g}s")
        time.sleep(0.05)


def one_run(run_dir: Path) -> dict[str, float]:
    engine, _results, first = start_to_first_result(run_dir)
    try:
        for _ in range(2):
            engine.submit(submission(spin, 600))
        wait_running(engine, 2)
        status_us = status_call_us(engine)
    finally:
        began = time.perf_counter()
        engine.shutdown(wait=False)
        shutdown = time.perf_counter() - began
    return {
        "start_to_first_result_s": first,
        "status_call_us": status_us,
        "shutdown_nowait_s": shutdown,
    }


def report(runs: list[dict[str, float]]) -> None:
    for i, figures in enumerate(runs, 1):
        print(f"run {i}: " + " ".join(f"{k}={v:.3f}" for k, v in figures.items()), flush=True)
    for key in runs[0]:
        print(f"{key}_median={statistics.median(r[key] for r in runs):.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"startup benchmark: GlobusComputeEngine, LocalProvider, {args.runs} runs", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        for i in range(args.runs):
            runs.append(one_run(Path(tmp) / f"run{i}"))
    report(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
