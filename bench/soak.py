"""Soak: a steady stream of tasks for minutes, a broker restart and an endpoint kill -9 midway.

Prints the exactly-once counts (`soak submitted=N results=N lost=0 duplicated=0 unexpected=0`)
and the endpoint's RSS after warm-up and at the end (`soak.rss_growth=X`, target <= 1.10).
The endpoint is killed at two thirds, so RSS is compared within each process: the first one
from its warm-up to just before the kill (it lives through the broker restart), the restarted
one from its own warm-up to the end. `make soak` runs the issue's 50,000 tasks over 10 minutes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import urllib.error

import psutil

from tests.fault.harness import FaultStack, Outcome

CONFIG = "engine:\n  type: ProcessPoolEngine\n  max_workers: 2\nheartbeat_period: 5\n"
NAME = "soak"
BATCH = 100
WARMUP_S = 30.0


def rss_mb(stack: FaultStack) -> float:
    root = psutil.Process(stack.procs[f"endpoint:{NAME}"].pid)
    procs = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 1e6


def submit_retrying(
    stack: FaultStack, endpoint_id: str, group: str | None
) -> tuple[list[str], str]:
    """Submit one batch; while the broker is down the service answers 503: try again."""
    for _ in range(120):
        try:
            return stack.submit(endpoint_id, "work", [(i, 0.0) for i in range(BATCH)], group)
        except urllib.error.HTTPError as e:
            if e.code != 503:
                raise
            e.close()  # the 503 response's connection, not needed for the retry
            time.sleep(0.5)
    raise RuntimeError("the service kept answering 503")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", type=int, default=50_000)
    p.add_argument("--minutes", type=float, default=10.0)
    args = p.parse_args()
    batches = max(1, args.tasks // BATCH)
    period = args.minutes * 60 / batches
    with FaultStack() as stack:
        stack.start_service()
        stack.configure_endpoint(NAME, CONFIG)
        endpoint_id = stack.start_endpoint(NAME)
        submitted: list[str] = []
        group: str | None = None
        rss: dict[str, float] = {}
        start = restarted = time.monotonic()
        first_warm = threading.Timer(WARMUP_S, lambda: rss.setdefault("first_warm", rss_mb(stack)))
        first_warm.start()
        for n in range(batches):
            ids, group = submit_retrying(stack, endpoint_id, group)
            submitted += ids
            if n == batches // 3:
                stack.rabbit.stop_app()
                time.sleep(5)
                stack.rabbit.start_app()
            if n == 2 * batches // 3:
                first_warm.cancel()
                rss["first_end"] = rss_mb(stack)
                proc = stack.procs.pop(f"endpoint:{NAME}")
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                stack.start_endpoint(NAME)
                restarted = time.monotonic()
                threading.Timer(WARMUP_S, lambda: rss.setdefault("warm", rss_mb(stack))).start()
            time.sleep(max(0.0, start + (n + 1) * period - time.monotonic()))
        assert group is not None
        results = stack.collect(group, len(submitted), timeout=600)
        rss["end"] = rss_mb(stack)
        outcome = Outcome(set(submitted), results)
        print(outcome.line("soak"), flush=True)
        warm = rss.get("warm", rss["end"])
        first_warm_mb = rss.get("first_warm", rss["first_end"])
        # The first process lived through the broker restart; the second one to the end.
        print(
            f"soak.first_rss_warm_mb={first_warm_mb:.1f} "
            f"soak.first_rss_before_kill_mb={rss['first_end']:.1f} "
            f"soak.first_rss_growth={rss['first_end'] / first_warm_mb:.3f} "
            f"(over {restarted - start - WARMUP_S:.0f}s, broker restart included)"
        )
        print(
            f"soak.rss_warm_mb={warm:.1f} soak.rss_end_mb={rss['end']:.1f} "
            f"soak.rss_growth={rss['end'] / warm:.3f} "
            f"(restarted {time.monotonic() - restarted:.0f}s before the end)"
        )
        ok = (outcome.lost, outcome.duplicated, outcome.unexpected) == (0, 0, 0)
        bounded = rss["end"] <= 1.10 * warm and rss["first_end"] <= 1.10 * first_warm_mb
        return 0 if ok and bounded else 1


if __name__ == "__main__":
    sys.exit(main())
