"""Cost as the work grows: ours vs the official endpoint 4.19, same web service and broker.

Four scenarios (`--scenarios`, all by default), each run against our endpoint and then the
official one, with the official SDK driving both from its own venv:

- `tasks`: N no-op tasks (default 100,000) through one endpoint, at most `--window` in flight.
  The RSS of the endpoint's process tree (workers included) is sampled at every 1,000 results:
  peak, and the slope in MB per 10,000 tasks after the first 20% (warm-up). "Flat" means a
  slope under 1 MB per 10k. Ours also reports the journal's size on disk at the end.
- `groups`: G task groups (one Executor each, default 1,000) of 10 no-op tasks, 20 groups
  alive at a time: p50/p95 of a group's submit-to-last-result seconds, and the RSS of the web
  service (started again before each side) and of the endpoint tree afterwards.
- `manager`: a core (manager) endpoint with U user endpoints (default 50), one per distinct
  `user_endpoint_config`, all kept running: p50/p95 of each one's first-task seconds, the
  manager's own memory, and the mean memory of a user endpoint's tree (PSS, not RSS: forked
  user endpoints share their parent's pages).
- `bigargs`: 1 GiB in total of 10 MB `bytes` arguments (the service's submission limit and the
  endpoint's `max_task_size` are raised to fit one such argument): MB/s of argument data, and
  the peak RSS of the web service (started again before each side) and of the endpoint tree
  during the run (a copy per hop would show as a multiple of the argument size in flight).

Prints `scale.SCENARIO.FIGURE ours=X official=Y ratio=Z` (ratio > 1 means ours is better:
ours/official for rates, official/ours for seconds and memory). `--quick` runs every scenario
small (CI runs it so the benchmark cannot rot); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from devstack.stack import AnyPortStack, Stack

ENGINE = "engine:\n  type: ThreadPoolEngine\n  max_workers: 2\n"
OURS_CONFIG = ENGINE + "heartbeat_period: 30\n"
OFFICIAL_TEMPLATE = ENGINE + "heartbeat_period: 30\nidle_heartbeats_soft: 0\n"
MANAGER_TEMPLATE = """\
engine:
  type: ThreadPoolEngine
  max_workers: 1
heartbeat_period: 30
idle_heartbeats_soft: 0
"""
#: Room for one 10 MB argument after the SDK's dill + base64 (x4/3) and its envelope: the
#: endpoint's `max_task_size`. The SDK batches what is waiting into one submission, hence the
#: service's larger limit.
BIG_LIMIT = 32 * 1024 * 1024
BIG_SUBMISSION_LIMIT = 4 * BIG_LIMIT  # the most the service accepts
MB = 1e6

# Runs in the official SDK's venv. Prints progress lines `P <results so far>` and, last, one
# JSON document.
DRIVER = r"""
import json, sys, threading, time, uuid
from concurrent.futures import wait, FIRST_COMPLETED, ThreadPoolExecutor
from globus_compute_sdk import Executor

def noop():
    return None

def size_of(data):
    return len(data)

mode, endpoint_id = sys.argv[1], sys.argv[2]
n, window = int(sys.argv[3]), int(sys.argv[4])

def stream():
    done = 0
    t0 = time.perf_counter()
    with Executor(endpoint_id=endpoint_id) as ex:
        ex.api_burst_limit = 10**9
        ex.submit(noop).result(timeout=300)
        t0 = time.perf_counter()
        pending, submitted = set(), 0
        while done < n:
            while submitted < n and len(pending) < window:
                pending.add(ex.submit(noop))
                submitted += 1
            finished, pending = wait(pending, timeout=600, return_when=FIRST_COMPLETED)
            if not finished:
                sys.exit("no result in 600 s")
            for f in finished:
                f.result()
                done += 1
                if done % 1000 == 0:
                    print(f"P {done}", flush=True)
    return {"seconds": time.perf_counter() - t0, "tasks": done}

def one_group(_):
    with Executor(endpoint_id=endpoint_id) as ex:
        ex.api_burst_limit = 10**9
        t0 = time.perf_counter()
        futs = [ex.submit(noop) for _ in range(10)]
        for f in futs:
            f.result(timeout=600)
        return time.perf_counter() - t0

def groups():
    with ThreadPoolExecutor(max_workers=window) as pool:
        times = list(pool.map(one_group, range(n)))
    return {"group_s": times}

def manager():
    times = []
    with Executor(endpoint_id=endpoint_id) as ex:
        ex.api_burst_limit = 10**9
        for i in range(n):
            ex.user_endpoint_config = {"nonce": uuid.uuid4().hex}
            t0 = time.perf_counter()
            ex.submit(noop).result(timeout=600)
            times.append(time.perf_counter() - t0)
            print(f"P {i + 1}", flush=True)
    return {"first_result_s": times}

def bigargs():
    arg = b"x" * 10_000_000
    with Executor(endpoint_id=endpoint_id) as ex:
        ex.api_burst_limit = 10**9
        ex.submit(noop).result(timeout=300)
        t0 = time.perf_counter()
        pending, submitted, done = set(), 0, 0
        while done < n:
            while submitted < n and len(pending) < window:
                pending.add(ex.submit(size_of, arg))
                submitted += 1
            finished, pending = wait(pending, timeout=600, return_when=FIRST_COMPLETED)
            if not finished:
                sys.exit("no result in 600 s")
            for f in finished:
                if f.result() != len(arg):
                    sys.exit("wrong result")
                done += 1
    return {"seconds": time.perf_counter() - t0, "bytes": n * len(arg)}

print(json.dumps({"stream": stream, "groups": groups, "manager": manager,
                  "bigargs": bigargs}[mode]()), flush=True)
"""


def _tree_sum(pid: int, measure: Callable[[psutil.Process], int]) -> float:
    """`measure` summed over a process and its descendants, MB (0 when it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        try:
            total += measure(proc)
        except psutil.NoSuchProcess:
            continue
    return total / MB


def tree_rss(pid: int) -> float:
    """RSS of a process and its descendants, MB."""
    return _tree_sum(pid, lambda p: p.memory_info().rss)


def tree_pss(pid: int) -> float:
    """Proportional set size of a process tree, MB: forked children share the pages of their
    parent, which RSS would count once per child."""
    return _tree_sum(pid, lambda p: p.memory_full_info().pss)


def user_endpoints(manager_pid: int) -> list[psutil.Process]:
    """A manager's user endpoint processes: its children, or, where it forks them from one
    helper process (ours: a fork server), that helper's children."""
    kids = psutil.Process(manager_pid).children()
    if len(kids) == 1 and kids[0].children():
        return list(kids[0].children())
    return list(kids)


def own_rss(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / MB
    except psutil.NoSuchProcess:
        return 0.0


@dataclass
class Sampler:
    """Peak tree RSS of some processes, sampled on a thread every 0.2 s."""

    pids: dict[str, int]
    peaks: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(0.2):
            for name, pid in self.pids.items():
                self.peaks[name] = max(self.peaks.get(name, 0.0), tree_rss(pid))

    @contextmanager
    def running(self) -> Iterator[Sampler]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def drive(
    stack: Stack,
    peer_python: str,
    argv: list[str],
    on_progress: Callable[[int], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the SDK driver; call `on_progress` at each progress line; return its JSON."""
    proc = subprocess.Popen(
        [peer_python, "-c", DRIVER, *argv],
        env=stack.client_env(stack.root / "sdk-user"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    last = ""
    for raw in proc.stdout:
        line = raw.strip()
        if line.startswith("P "):
            on_progress(int(line[2:]))
        elif line:
            last = line
    err = proc.stderr.read()
    if proc.wait() != 0 or not last:
        sys.exit(f"SDK driver {argv[0]} failed:\n{err[-4000:]}")
    out: dict[str, Any] = json.loads(last)
    return out


def slope_mb_per_10k(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS over results after the first 20%, in MB per 10,000 tasks."""
    if not points:
        return 0.0
    warm = [p for p in points if p[0] > points[-1][0] * 0.2]
    if len(warm) < 2:
        return 0.0
    xs, ys = [p[0] for p in warm], [p[1] for p in warm]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return (
        0.0
        if den == 0
        else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 1e4
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def journal_mb(ep_dir: Path) -> float:
    return sum(p.stat().st_size for p in ep_dir.rglob("journal.db*") if p.is_file()) / MB


@dataclass
class Target:
    """One endpoint under test: how to start and stop it, and its process's name."""

    who: str
    start: Callable[[], str]
    stop: Callable[[], None]
    proc: str
    ep_dir: Path | None


def our_target(stack: Stack, name: str, config: str) -> Target:
    ep_dir = stack.configure_endpoint(name, config)
    return Target(
        "ours",
        lambda: stack.start_endpoint(name),
        lambda: stack.stop_endpoint(name),
        f"endpoint:{name}",
        ep_dir,
    )


def official_target(stack: Stack, peer_bin: Path, name: str, template: str) -> Target:
    return Target(
        "official",
        lambda: stack.start_official_endpoint(peer_bin, name, template),
        lambda: stack.stop_official_endpoint(name),
        f"official:{name}",
        None,
    )


def scenario_tasks(stack: Stack, args: argparse.Namespace, t: Target) -> dict[str, float]:
    endpoint_id = t.start()
    pid = stack.procs[t.proc].pid
    points: list[tuple[int, float]] = []
    with Sampler({"endpoint": pid}).running() as sampler:
        out = drive(
            stack,
            args.peer_python,
            ["stream", endpoint_id, str(args.tasks), str(args.window)],
            lambda done: points.append((done, tree_rss(pid))),
        )
    figures = {
        "tasks_per_s": out["tasks"] / out["seconds"],
        "peak_rss_mb": max(sampler.peaks.get("endpoint", 0.0), *(p[1] for p in points)),
        "rss_slope_mb_per_10k": slope_mb_per_10k(points),
    }
    if t.ep_dir is not None:
        print(f"# tasks {t.who}: journal at the end {journal_mb(t.ep_dir):.2f} MB", flush=True)
    t.stop()
    return figures


def fresh_service(stack: Stack) -> None:
    """The service started again (same database), so each side's service figures start from
    the same memory: CPython keeps the pages an earlier side's peak took."""
    stack.stop_service()
    stack.start_service()


def scenario_groups(stack: Stack, args: argparse.Namespace, t: Target) -> dict[str, float]:
    fresh_service(stack)
    endpoint_id = t.start()
    out = drive(stack, args.peer_python, ["groups", endpoint_id, str(args.groups), "20"])
    figures = {
        "group_p50_s": statistics.median(out["group_s"]),
        "group_p95_s": pct(out["group_s"], 0.95),
        "service_rss_mb": own_rss(stack.procs["webservice"].pid),
        "endpoint_rss_mb": tree_rss(stack.procs[t.proc].pid),
    }
    t.stop()
    return figures


def scenario_manager(stack: Stack, args: argparse.Namespace, t: Target) -> dict[str, float]:
    endpoint_id = t.start()
    pid = stack.procs[t.proc].pid
    out = drive(stack, args.peer_python, ["manager", endpoint_id, str(args.user_endpoints), "1"])
    per_uep = [r for r in (tree_pss(c.pid) for c in user_endpoints(pid)) if r > 0]
    print(f"# manager {t.who}: {len(per_uep)} user endpoint processes alive", flush=True)
    figures = {
        "first_result_p50_s": statistics.median(out["first_result_s"]),
        "first_result_p95_s": pct(out["first_result_s"], 0.95),
        # PSS: ours forks user endpoints from a warm fork server, whose pages they share.
        "manager_pss_mb": tree_pss(pid) - sum(per_uep),
        "pss_per_user_endpoint_mb": statistics.fmean(per_uep) if per_uep else 0.0,
    }
    t.stop()
    return figures


def scenario_bigargs(stack: Stack, args: argparse.Namespace, t: Target) -> dict[str, float]:
    fresh_service(stack)
    endpoint_id = t.start()
    count = max(1, int(args.big_total_mb // 10))
    pids = {"endpoint": stack.procs[t.proc].pid, "service": stack.procs["webservice"].pid}
    with Sampler(pids).running() as sampler:
        out = drive(stack, args.peer_python, ["bigargs", endpoint_id, str(count), "4"])
    figures = {
        "mb_per_s": out["bytes"] / MB / out["seconds"],
        "endpoint_peak_rss_mb": sampler.peaks.get("endpoint", 0.0),
        "service_peak_rss_mb": sampler.peaks.get("service", 0.0),
    }
    t.stop()
    return figures


#: figure -> higher is better
BETTER_HIGH = {"tasks_per_s", "mb_per_s"}
SCENARIOS: dict[str, Callable[[Stack, argparse.Namespace, Target], dict[str, float]]] = {
    "tasks": scenario_tasks,
    "groups": scenario_groups,
    "manager": scenario_manager,
    "bigargs": scenario_bigargs,
}


def targets(stack: Stack, scenario: str, peer_bin: Path, args: argparse.Namespace) -> list[Target]:
    if scenario == "manager":
        ours = our_target(
            stack,
            "scale-mgr",
            "display_name: scale-mgr\nheartbeat_period: 30\nemail: bench@example.org\n"
            # Ours caps running user endpoints (default 32); the official has no such cap.
            f"max_user_endpoints: {args.user_endpoints + 8}\n",
        )
        assert ours.ep_dir is not None
        (ours.ep_dir / "user_config_template.yaml.j2").write_text(MANAGER_TEMPLATE)
        (ours.ep_dir / "user_environment.yaml").write_text(
            f"GLOBUS_COMPUTE_USER_DIR: {stack.root / 'ours-uep-user'}\n"
        )
        return [ours, official_target(stack, peer_bin, "scale-mgr-off", MANAGER_TEMPLATE)]
    config, template = OURS_CONFIG, OFFICIAL_TEMPLATE
    if scenario == "bigargs":
        config += f"max_task_size: {BIG_LIMIT}\n"
    return [
        our_target(stack, f"scale-{scenario}", config),
        official_target(stack, peer_bin, f"scale-{scenario}-off", template),
    ]


def report(scenario: str, results: dict[str, dict[str, float]]) -> None:
    ours, official = results["ours"], results["official"]
    for fig in ours:
        a, b = ours[fig], official[fig]
        if fig in BETTER_HIGH:
            ratio = a / b if b else float("inf")
        else:
            ratio = b / a if a else float("inf")
        print(f"scale.{scenario}.{fig} ours={a:.2f} official={b:.2f} ratio={ratio:.2f}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--peer-python", required=True)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--window", type=int, default=2_000, help="tasks in flight (tasks scenario)")
    p.add_argument("--groups", type=int, default=1_000)
    p.add_argument("--user-endpoints", type=int, default=50)
    p.add_argument("--big-total-mb", type=float, default=1024.0)
    p.add_argument("--quick", action="store_true", help="every scenario small: CI's smoke run")
    args = p.parse_args()
    if args.quick:
        args.tasks, args.groups, args.user_endpoints, args.big_total_mb = 1000, 10, 2, 20.0
    peer_bin = Path(args.peer_python).absolute().parent
    # The service reads its limit from the environment it inherits.
    os.environ["COMPUTE_WEBSERVICE_MAX_SUBMISSION_BYTES"] = str(BIG_SUBMISSION_LIMIT)
    # A free port: CI runs the quick mode on the host network, beside other stacks.
    with AnyPortStack() as stack:
        stack.start_service()
        for scenario in args.scenarios.split(","):
            run = SCENARIOS[scenario]
            results = {t.who: run(stack, args, t) for t in targets(stack, scenario, peer_bin, args)}
            for who, figs in results.items():
                print(f"# {scenario} {who}: {json.dumps(figs)}", flush=True)
            report(scenario, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
