"""Reliability side by side: `kill -9` of the process that runs tasks, ours vs the official.

For each endpoint and each round: submit 60 tasks of 0.05 s (2 workers), wait a random
0.3-1.5 s, SIGKILL the process that holds the tasks (ours: the endpoint; the official 4.19:
the user endpoint its manager started), let it come back (ours: started again, as a
supervisor would; the official: its manager restarts the user endpoint when the service asks),
then count what came back within `--collect` seconds:

    fault_compare.ours round=1 submitted=60 results=60 lost=0 duplicated=0 unexpected=0 ...

and the totals per endpoint. A task that was running at the kill may come back as a failure
(ours says EndpointInterrupted); a lost task never comes back at all.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from pathlib import Path

import psutil

from devstack.stack import SDK_LOCAL_PORT
from tests.fault.harness import FaultStack, Outcome

OURS = "cmp-ours"
OFFICIAL = "cmp-official"
CONFIG = "engine:\n  type: ProcessPoolEngine\n  max_workers: 2\nheartbeat_period: 5\n"
TEMPLATE = """\
engine:
  type: ProcessPoolEngine
  max_workers: 2
heartbeat_period: 5
idle_heartbeats_soft: 0
"""
TASKS = 60


def official_uep(stack: FaultStack, timeout: float = 120) -> psutil.Process:
    """The user endpoint process under the official manager (started once tasks arrive)."""
    manager = psutil.Process(stack.procs[f"official:{OFFICIAL}"].pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in manager.children():
            try:
                alive = child.status() != psutil.STATUS_ZOMBIE  # a killed one not reaped yet
                if alive and "globus-compute-endpoint" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise TimeoutError("the official manager started no user endpoint")


def kill_ours(stack: FaultStack) -> None:
    proc = stack.procs.pop(f"endpoint:{OURS}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    stack.start_endpoint(OURS)


#: The official user endpoints' worker processes at each kill: they outlive it (and ignore
#: SIGTERM), so the run counts and ends them itself.
ORPHANS: list[psutil.Process] = []


def kill_official(stack: FaultStack) -> None:
    # The manager notices and the service's next start command brings a new one up.
    uep = official_uep(stack)
    ORPHANS.extend(uep.children(recursive=True))
    uep.send_signal(signal.SIGKILL)


def end_orphans() -> int:
    """SIGKILL the killed user endpoints' workers still running; return how many there were."""
    ended = 0
    for proc in ORPHANS:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
                ended += 1
        except psutil.NoSuchProcess:
            continue
    return ended


def one_round(
    stack: FaultStack, who: str, endpoint_id: str, rng: random.Random, collect_s: float
) -> Outcome:
    ids, group = stack.submit(endpoint_id, "work", [(i, 0.05) for i in range(TASKS)], None)
    if who == "official":
        official_uep(stack)  # it exists once the first tasks have been routed to it
    time.sleep(rng.uniform(0.3, 1.5))
    (kill_ours if who == "ours" else kill_official)(stack)
    return Outcome(set(ids), stack.collect(group, len(ids), timeout=collect_s))


def describe(outcome: Outcome) -> str:
    codes = sorted(str((r.error_details or {}).get("code") or "error") for r in outcome.failures())
    return f"failures={len(codes)} codes={','.join(sorted(set(codes))) or '-'}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--peer-python", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--collect", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"# seed={seed}", flush=True)
    peer_bin = Path(args.peer_python).absolute().parent
    totals: dict[str, list[int]] = {}
    with FaultStack(port=SDK_LOCAL_PORT) as stack:
        stack.start_service()
        stack.configure_endpoint(OURS, CONFIG)
        endpoints = {
            "ours": stack.start_endpoint(OURS),
            "official": stack.start_official_endpoint(peer_bin, OFFICIAL, TEMPLATE),
        }
        for who, endpoint_id in endpoints.items():
            rng = random.Random(seed)  # the same kill moments for both
            for n in range(1, args.rounds + 1):
                outcome = one_round(stack, who, endpoint_id, rng, args.collect)
                print(f"fault_compare.{outcome.line(f'{who} round={n}')} {describe(outcome)}")
                t = totals.setdefault(who, [0, 0, 0, 0])
                for i, v in enumerate(
                    (len(outcome.submitted), outcome.lost, outcome.duplicated, outcome.unexpected)
                ):
                    t[i] += v
        stack.stop_official_endpoint(OFFICIAL)
    print(f"fault_compare.official.orphaned_workers={end_orphans()}", flush=True)
    for who, (submitted, lost, duplicated, unexpected) in totals.items():
        print(
            f"fault_compare.{who}.total submitted={submitted} lost={lost} "
            f"duplicated={duplicated} unexpected={unexpected}",
            flush=True,
        )
    ours = totals["ours"]
    return 0 if ours[1:] == [0, 0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
