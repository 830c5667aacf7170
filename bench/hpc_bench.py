"""Ours vs the official endpoint 4.19 on a real Slurm (tools/slurm-up), one run: the same web
service and broker (one devstack Stack on a free port), the same engine and SlurmProvider
config (2 workers per block, blocks of one node, `exclusive: false`, strategy period 0.5 s,
max_idletime 10 s, init_blocks 0 and min_blocks 0).

Per endpoint, two starts:
- one block (max_blocks 1):
  start_to_first_result_s: from spawning the start command (`compute-endpoint start`, or
    `globus-compute-endpoint start` of the official manager, configured beforehand) to the SDK
    holding the first result; with init_blocks 0 this includes submitting the first block and
    its workers connecting;
  noop_throughput_per_s: 2000 no-op tasks (--noop-tasks) through one Executor, on the warm
    block (2 workers). Not 200: the SDK matches results every 0.5 s, and 200 no-ops take about
    that long, so 200 would measure the SDK's tick.
- scaling (max_blocks 2), after one warm-up task and its block's scale-in (printed as a comment):
  scale_out_s: a burst of 8 tasks of 5 s submitted -> squeue shows 2 RUNNING jobs of the
    endpoint;
  scale_in_s: the SDK holding the burst's last result -> none of the endpoint's jobs in squeue.
squeue is polled every 0.25 s. Prints `slurm.FIGURE ours=X official=Y ratio=Z` (endpoint_bench's
`line()`: ratio > 1 means ours is better). One trial each: the machine is shared and noisy.

The official SDK's `local` environment is fixed at localhost:5000; a sitecustomize on the
official tools' PYTHONPATH (devstack/official_url.py) points them at the
free port instead. Slurm listens on the host's 127.0.0.1, so this runs in the host network.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench.endpoint_bench import first_result_at, line
from devstack.stack import AnyPortStack
from tests.hpc.conftest import cancel_jobs_under, jobs_under, slurm_problem

HERE = Path(__file__).resolve().parent
POLL_S = 0.25
DEADLINE_S = 600.0
BURST_TASKS = 8
BURST_TASK_S = 5

ENGINE = """engine:
  type: GlobusComputeEngine
  address: 127.0.0.1
  max_workers_per_node: 2
  job_status_kwargs:
    max_idletime: 10
    strategy_period: 0.5
  provider:
    type: SlurmProvider
    partition: debug
    exclusive: false
    init_blocks: 0
    min_blocks: 0
    max_blocks: {max_blocks}
    nodes_per_block: 1
    walltime: "00:30:00"
    cmd_timeout: 60
"""


def our_config(max_blocks: int) -> str:
    return ENGINE.format(max_blocks=max_blocks) + "heartbeat_period: 30\n"


def official_template(max_blocks: int) -> str:
    return ENGINE.format(max_blocks=max_blocks) + "heartbeat_period: 30\nidle_heartbeats_soft: 0\n"


class SlurmStack(AnyPortStack):
    """A stack on a free port that notes when each process was spawned (the start command's
    instant)."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned_at: dict[str, float] = {}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.spawned_at[name] = time.time()
        super()._spawn(name, argv, env)


@dataclass
class Squeue:
    """Samples (time, running, queued) of the jobs under `prefix`, in a thread."""

    prefix: Path
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Squeue:
        threading.Thread(target=self._run, name="squeue", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = jobs_under(self.prefix)
            except (AssertionError, subprocess.TimeoutExpired):
                jobs = None  # slurmctld busy: the next poll tries again
            if jobs is not None:
                running = sum(job.state == "RUNNING" for job in jobs)
                self.samples.append((time.time(), running, len(jobs)))
            self._stop.wait(POLL_S)

    def first(
        self, after: float, what: str, cond: Callable[[int, int], bool], timeout: float = DEADLINE_S
    ) -> float:
        """The first sample at or after `after` where cond(running, queued) holds; waits up to
        `timeout` for it (0: look only at the samples taken so far)."""
        deadline = time.monotonic() + timeout
        while True:
            for t, running, queued in list(self.samples):
                if t >= after and cond(running, queued):
                    return t
            if time.monotonic() >= deadline:
                sys.exit(f"{what}: not seen in squeue for the jobs under {self.prefix}")
            time.sleep(POLL_S)


def sdk(stack: SlurmStack, peer_python: str, *argv: str, timeout: float = DEADLINE_S) -> str:
    proc = subprocess.run(
        [peer_python, *argv],
        env=stack.client_env(stack.root / "sdk-user"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"SDK driver failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


#: Runs in the official SDK's venv: submits `n` tasks of `s` seconds from one Executor; prints
#: when the first was submitted and when the SDK held the last result (time.time()).
BURST = """
import json, sys, time
from globus_compute_sdk import Executor

def nap(seconds):
    import time
    time.sleep(seconds)

endpoint_id, n, s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with Executor(endpoint_id=endpoint_id) as ex:
    ex.api_burst_limit = 10**9
    submitted = time.time()
    futures = [ex.submit(nap, s) for _ in range(n)]
    for f in futures:
        f.result(timeout=600)
    print(json.dumps({"submitted": submitted, "last_result": time.time()}))
"""


def burst(
    stack: SlurmStack, peer_python: str, endpoint_id: str, n: int, s: float
) -> dict[str, float]:
    out = sdk(stack, peer_python, "-c", BURST, endpoint_id, str(n), str(s))
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def first_result_s(
    stack: SlurmStack, peer_python: str, proc_name: str, start: Callable[[], str]
) -> tuple[str, float]:
    """Start the endpoint; seconds from spawning its start command to the first result."""
    endpoint_id, _called, first = first_result_at(peer_python, stack, start)
    return endpoint_id, first - stack.spawned_at[proc_name]


class Side:
    """Starting, stopping and finding the jobs of one side's endpoints (ours here)."""

    label = "ours"

    def __init__(self, stack: SlurmStack, peer_python: str) -> None:
        self.stack = stack
        self.peer_python = peer_python

    def prepare(self, name: str, max_blocks: int) -> Callable[[], str]:
        """Configure `name`; the call that starts it and returns its id once online."""
        self.stack.configure_endpoint(name, our_config(max_blocks))
        return partial(self.stack.start_endpoint, name, timeout=180)

    def proc_name(self, name: str) -> str:
        return f"endpoint:{name}"

    def jobs_prefix(self, name: str) -> Path:
        return self.stack.root / "user" / name

    def stop(self, name: str) -> None:
        self.stack.stop_endpoint(name)


class OfficialSide(Side):
    label = "official"

    def prepare(self, name: str, max_blocks: int) -> Callable[[], str]:
        # `configure` runs inside start_official_endpoint, before the start command is spawned.
        peer_bin = Path(self.peer_python).absolute().parent  # not resolve(): keep the venv path
        template = official_template(max_blocks)
        return partial(self.stack.start_official_endpoint, peer_bin, name, template, timeout=180)

    def proc_name(self, name: str) -> str:
        return f"official:{name}"

    def jobs_prefix(self, name: str) -> Path:
        return self.stack.root / "official-user"  # its user endpoints' directories lie there

    def stop(self, name: str) -> None:
        self.stack.stop_official_endpoint(name)


def stop_and_clean(side: Side, name: str) -> None:
    """Stop the endpoint and wait for its jobs to leave squeue; scancel any it left."""
    side.stop(name)
    prefix = side.jobs_prefix(name)
    deadline = time.monotonic() + 120
    while jobs_under(prefix) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    left = cancel_jobs_under(prefix)
    if left:
        print(f"# {side.label}: jobs left queued 120 s after stop, scancel'ed: {left}")


def one_block(side: Side, noop_tasks: int) -> dict[str, float]:
    """start_to_first_result_s and noop_throughput_per_s, on an endpoint of one block."""
    name = f"hpc-{side.label}-one"
    start = side.prepare(name, max_blocks=1)
    endpoint_id, first = first_result_s(side.stack, side.peer_python, side.proc_name(name), start)
    driver = [str(HERE / "sdk_driver.py"), "--endpoint-id", endpoint_id]
    burst_only = ["--sequential", "0", "--warmup", "0", "--burst", str(noop_tasks)]
    out = sdk(side.stack, side.peer_python, *driver, *burst_only)
    throughput = float(json.loads(out.strip().splitlines()[-1])["noop_throughput_per_s"])
    stop_and_clean(side, name)
    return {"start_to_first_result_s": first, "noop_throughput_per_s": throughput}


def scaling(side: Side) -> dict[str, float]:
    """scale_out_s (0 -> 2 running blocks) and scale_in_s (last result -> no jobs)."""
    name = f"hpc-{side.label}-scale"
    endpoint_id = side.prepare(name, max_blocks=2)()
    stack, peer = side.stack, side.peer_python
    with Squeue(side.jobs_prefix(name)) as queue:
        # One task first: the official manager starts its user endpoint for it, and the
        # burst starts from 0 blocks once that task's block has scaled in.
        warm = burst(stack, peer, endpoint_id, 1, 0)
        warm_in = queue.first(warm["last_result"], "the warm-up block's scale-in", no_jobs)
        print(f"# {side.label}: one block's scale-in {warm_in - warm['last_result']:.2f}s")
        run = burst(stack, peer, endpoint_id, BURST_TASKS, BURST_TASK_S)
        two = queue.first(run["submitted"], "2 running blocks", two_running, timeout=0)
        # The endpoint's share of the scale-out, without Slurm's scheduling: 2 jobs in any state.
        asked = queue.first(run["submitted"], "2 blocks submitted", two_queued, timeout=0)
        print(f"# {side.label}: 2 blocks in squeue after {asked - run['submitted']:.2f}s")
        gone = queue.first(run["last_result"], "the blocks' scale-in", no_jobs)
    stop_and_clean(side, name)
    return {"scale_out_s": two - run["submitted"], "scale_in_s": gone - run["last_result"]}


def no_jobs(running: int, queued: int) -> bool:
    return queued == 0


def two_running(running: int, queued: int) -> bool:
    return running >= 2


def two_queued(running: int, queued: int) -> bool:
    return queued >= 2


# (figure, higher is better)
FIGURES = (
    ("start_to_first_result_s", False),
    ("noop_throughput_per_s", True),
    ("scale_out_s", False),
    ("scale_in_s", False),
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--peer-python", required=True)
    p.add_argument("--noop-tasks", type=int, default=2000)
    args = p.parse_args()
    if not Path(args.peer_python).exists():
        sys.exit(f"official peers missing at {args.peer_python}: run `make peers`")
    if (problem := slurm_problem()) is not None:
        sys.exit(f"Slurm is not up ({problem}): run tools/slurm-up (or `make slurm-up`)")
    results: dict[str, dict[str, float]] = {"ours": {}, "official": {}}
    with SlurmStack() as stack:
        stack.start_service()
        sides = [Side(stack, args.peer_python), OfficialSide(stack, args.peer_python)]
        phases: list[Callable[[Side], dict[str, float]]] = [
            partial(one_block, noop_tasks=args.noop_tasks),
            scaling,
        ]
        for phase in phases:
            for side in sides:
                figures = phase(side)
                print(f"# {side.label}: {figures}")
                results[side.label].update(figures)
    for fig, higher_is_better in FIGURES:
        ours, official = results["ours"][fig], results["official"][fig]
        print(line(f"slurm.{fig}", ours, official, higher_is_better))
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress as it runs
    sys.exit(main())
