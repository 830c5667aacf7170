"""Manager endpoints, ours vs the official 4.19, same web service and broker, one run.

`uep_first_result`: the time from submitting the first task with a new
`user_endpoint_config` to holding its result. That is the cold start of a user endpoint as a
submitter feels it: the service sends `cmd_start_endpoint`, the manager renders the template
and starts the user endpoint, which connects, takes the task and answers.

The SDK is imported, the function registered and the result watcher running (a warm-up task
on another config) before each trial changes the Executor's `user_endpoint_config` to a new
one. The time is measured at the service, from the submit reaching it to the result's
republish to the SDK (the SDK itself only matches results every 0.5 s, which would round
every figure up to a multiple of that; its view is printed as a comment). Prints per engine
`uep_first_result[.ENGINE] ours=X official=Y ratio=Z` (medians in seconds; ratio =
official/ours, as in `endpoint_bench.py`: > 1 means we are faster), and our figure with the
`exec` launcher (a fresh interpreter per user endpoint) beside the default `fork` one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from devstack.stack import Stack

TEMPLATE = """\
engine:
  type: {{ engine }}
  max_workers: 2
heartbeat_period: 30
idle_heartbeats_soft: 0
"""
ENGINES = {"thread": "ThreadPoolEngine", "process": "ProcessPoolEngine"}
LAUNCHER_ENV = "COMPUTE_UEP_LAUNCHER"

# Runs in the official SDK's venv: prints the seconds of each trial as a JSON list.
DRIVER = """
import json, sys, time, uuid
from globus_compute_sdk import Executor

def noop():
    return None

endpoint_id, engine, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
times, ids = [], []
with Executor(endpoint_id=endpoint_id) as ex:
    ex.api_burst_limit = 10**9  # the SDK otherwise paces a 5th submit within 16 s
    ex.user_endpoint_config = {"engine": engine, "nonce": "warm-up-" + uuid.uuid4().hex}
    ex.submit(noop).result(timeout=300)
    for _ in range(trials):
        ex.user_endpoint_config = {"engine": engine, "nonce": uuid.uuid4().hex}
        t0 = time.perf_counter()
        fut = ex.submit(noop)
        fut.result(timeout=300)
        times.append(time.perf_counter() - t0)
        ids.append(fut.task_id)
    group = str(ex.task_group_id)
print(json.dumps({"client_s": times, "task_ids": ids, "task_group_id": group}))
"""


def trials(
    stack: Stack, peer_python: str, endpoint_id: str, engine: str, n: int
) -> tuple[list[float], list[float]]:
    """Per trial: the service-side seconds, and the SDK-side ones."""
    proc = subprocess.run(
        [peer_python, "-c", DRIVER, endpoint_id, engine, str(n)],
        env=stack.client_env(stack.root / "sdk-user"),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"SDK driver failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    timings = stack.get(f"/v2/_bench/task_timings?task_group_id={out['task_group_id']}")["tasks"]
    service = [
        (timings[t]["result_published_ns"] - timings[t]["submit_received_ns"]) / 1e9
        for t in out["task_ids"]
    ]
    return service, list(out["client_s"])


def start_ours(stack: Stack, name: str, launcher: str) -> str:
    ep_dir = stack.configure_endpoint(
        name, f"display_name: {name}\nheartbeat_period: 30\nemail: bench@example.org\n"
    )
    (ep_dir / "user_config_template.yaml.j2").write_text(TEMPLATE)
    (ep_dir / "user_environment.yaml").write_text(
        f"GLOBUS_COMPUTE_USER_DIR: {stack.root / 'ours-uep-user'}\n"
    )
    os.environ[LAUNCHER_ENV] = launcher  # the stack hands our environment to the endpoint
    try:
        return stack.start_endpoint(name)
    finally:
        del os.environ[LAUNCHER_ENV]


def line(name: str, ours: float, official: float) -> str:
    return f"{name} ours={ours:.2f} official={official:.2f} ratio={official / ours:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--peer-python", required=True)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--engines", default="thread,process")
    args = p.parse_args()
    peer_bin = Path(args.peer_python).absolute().parent
    engines = [ENGINES[e] for e in args.engines.split(",")]
    with Stack() as stack:
        stack.start_service()
        endpoints = {
            "ours": start_ours(stack, "bench-mgr-fork", "fork"),
            "ours-exec": start_ours(stack, "bench-mgr-exec", "exec"),
            "official": stack.start_official_endpoint(peer_bin, "bench-mgr-official", TEMPLATE),
        }
        for short, engine in zip(args.engines.split(","), engines, strict=True):
            medians = {}
            for who, endpoint_id in endpoints.items():
                times, sdk = trials(stack, args.peer_python, endpoint_id, engine, args.trials)
                medians[who] = statistics.median(times)
                print(
                    f"# {short} {who}: service {' '.join(f'{t:.3f}' for t in times)}; "
                    f"SDK {' '.join(f'{t:.2f}' for t in sdk)}",
                    flush=True,
                )
            suffix = "" if short == "thread" else f".{short}"
            print(line(f"uep_first_result{suffix}", medians["ours"], medians["official"]))
            print(line(f"uep_first_result_exec{suffix}", medians["ours-exec"], medians["official"]))
            print(f"# ours/official = {medians['ours'] / medians['official']:.2f}", flush=True)
        stack.stop_official_endpoint("bench-mgr-official")
    return 0


if __name__ == "__main__":
    sys.exit(main())
