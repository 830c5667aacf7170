"""Drain benchmark: how fast an endpoint empties a deep task queue, ours vs the official 4.19.

For each engine (ThreadPool / ProcessPool / GlobusComputeEngine on LocalProvider, 2 workers, the
same engine block for both endpoints, on one broker and one web service):
1. the endpoint is started once, so the service creates its task queue (the official manager
   gets one warm-up task through the submit route, which makes the service create its user
   endpoint and queue), then stopped;
2. N task messages (`--work`: no-op, 1 ms or 10 ms sleep; the function registered through the
   service, serialized by the official SDK) are published straight into that task queue with
   pika, in the wire format of protocol.md §4.2/§5;
3. the service's `results` queue is unbound from the `results` exchange and a queue of this
   benchmark is bound instead: the web service and the SDK are out of the measured path;
4. the endpoint is started (for the official one: its manager, with the start command of its
   user endpoint already waiting) and timed from the spawn of its start command to the moment
   the last result is on the broker.

Figures, printed as `drain.ENGINE.FIGURE ours=X official=Y ratio=Z` (ratio > 1 means ours is
better, as in endpoint_bench):
- tasks_per_s: N / (last result - spawn), startup included;
- steady_tasks_per_s: (N - 1) / (last result - first result);
- cpu_s_per_1k: CPU seconds (user + system) of the endpoint's process tree (psutil, every
  process seen under the started one, workers included) per 1,000 tasks, startup included;
- peak_rss_mb: the highest sum of RSS over that tree, sampled every 0.1 s.
Results must be exactly once: the distinct task ids are counted, and a missing, duplicated or
failed result ends the run with an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import psutil

from bench.endpoint_bench import ENGINES, line, official_template, our_config
from devstack.stack import AnyPortStack
from endpoint.protocol.messages import Result, Task, pack, unpack

WORKS = {"noop": None, "sleep1ms": 0.001, "sleep10ms": 0.01}
RESULTS_EXCHANGE = "results"
SERVICE_RESULTS_QUEUE = "results"
RESULTS_KEY = "*.results"
SAMPLE_S = 0.1
DEADLINE_S = 1800.0
#: A drain that brings no new result for this long has stalled: the run fails, saying where.
STALL_S = 180.0
#: After the last expected result, how long to keep listening for duplicates.
DUPLICATE_GRACE_S = 1.0
PUBLISH_CONFIRM_EVERY = 1000
#: A broker that blocks publishers (its disk or memory alarm) fails the run instead of hanging.
BLOCKED_TIMEOUT_S = 120.0

#: Runs in the official SDK's venv: the function code and one payload of each work, serialized
#: as the official SDK does, so that both endpoints can run them.
SERIALIZE = """
import json, sys
from globus_compute_sdk.serialize import ComputeSerializer

def noop():
    return None

def nap(seconds):
    import time
    time.sleep(seconds)

seconds = float(sys.argv[1])
s = ComputeSerializer()
fn, args = (noop, ()) if seconds == 0 else (nap, (seconds,))
print(json.dumps({
    "name": fn.__name__,
    "code": s.pack_buffers([s.serialize(fn)]),
    "payload": s.pack_buffers([s.serialize(args), s.serialize({})]),
}))
"""


class DrainStack(AnyPortStack):
    """A stack on a free port (other benchmarks may hold 5000)."""

    def client_env(self, user_dir: Path) -> dict[str, str]:
        env = super().client_env(user_dir)
        # As a user's endpoint runs: its first start (the preparing one) writes the bytecode
        # caches, the measured start reads them instead of compiling every module again.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        return env

    def check_alive(self, name: str) -> None:
        self._check_alive(name)

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        self._spawn(name, argv, env)
        return self.procs[name].pid

    def queue_names(self) -> set[str]:
        """Every queue of the broker, through the management API (as its administrator)."""
        parts = urllib.parse.urlsplit(self.rabbit.admin_url)
        base = f"http://{parts.hostname}:{parts.port}"
        mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        mgr.add_password(
            None,
            base,
            urllib.parse.unquote(parts.username or ""),
            urllib.parse.unquote(parts.password or ""),
        )
        opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(mgr))
        with opener.open(f"{base}/api/queues/%2F?columns=name", timeout=30) as resp:
            return {q["name"] for q in json.load(resp)}


@dataclass
class Work:
    function_id: str
    code: str
    payload: str


def prepare_work(stack: DrainStack, peer_python: str, seconds: float) -> Work:
    out = subprocess.run(
        [peer_python, "-c", SERIALIZE, str(seconds)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    ser = json.loads(out.strip().splitlines()[-1])
    reg = stack.api(
        "POST",
        "/v3/functions",
        {"function_name": ser["name"], "function_code": ser["code"], "serialized": True},
    )
    return Work(str(reg["function_uuid"]), ser["code"], ser["payload"])


def task_queue_of(stack: DrainStack, endpoint_id: str | None, before: set[str]) -> str:
    """The task queue of `endpoint_id`, or the one task queue created since `before`."""
    names = stack.queue_names()
    if endpoint_id is not None:
        found = [n for n in names if n.startswith(f"{endpoint_id}.tasks.")]
    else:
        found = [n for n in names - before if ".tasks." in n]
    if len(found) != 1:
        sys.exit(f"cannot tell the task queue (endpoint {endpoint_id}): {sorted(found)}")
    return found[0]


def publish_tasks(url: str, queue: str, work: Work, n: int) -> set[str]:
    """N task messages straight into `queue`, confirmed by the broker; their task ids."""
    ids = {str(uuid.uuid4()) for _ in range(n)}
    conn = pika.BlockingConnection(broker_params(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for tid in ids:
            props = pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                headers={
                    "function_uuid": work.function_id,
                    "task_uuid": tid,
                    "resource_specification": "null",
                    "result_serializers": [],
                },
            )
            body = pack(Task(task_id=tid, task_buffer=work.code + work.payload))
            ch.basic_publish("", queue, body, props, mandatory=True)
    finally:
        conn.close()
    return ids


def broker_params(url: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.blocked_connection_timeout = BLOCKED_TIMEOUT_S
    return params


class Stalled(Exception):
    """A drain brought no new result for STALL_S."""


class ResultTap:
    """A queue of this benchmark bound to the `results` exchange in place of the service's."""

    def __init__(self, url: str) -> None:
        self.conn = pika.BlockingConnection(broker_params(url))
        self.ch = self.conn.channel()
        self.queue = f"bench.drain.{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> ResultTap:
        self.ch.queue_declare(self.queue, exclusive=True)
        self.ch.queue_bind(self.queue, RESULTS_EXCHANGE, RESULTS_KEY)
        self.ch.queue_unbind(SERVICE_RESULTS_QUEUE, RESULTS_EXCHANGE, RESULTS_KEY)
        self.ch.basic_qos(prefetch_count=5000)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.ch.queue_bind(SERVICE_RESULTS_QUEUE, RESULTS_EXCHANGE, RESULTS_KEY)
        finally:
            self.conn.close()

    def collect(
        self, expected: set[str], deadline_s: float, alive: Callable[[], None]
    ) -> Collected:
        """Results until every expected one is in (and a grace for duplicates); `alive`
        raises once the endpoint has exited, so a crashed endpoint fails the run at once."""
        got = Collected()
        deadline = time.monotonic() + deadline_s
        done_at: float | None = None
        progress_at = time.monotonic()
        for method, _props, body in self.ch.consume(
            self.queue, auto_ack=True, inactivity_timeout=0.2
        ):
            now = time.time()
            if method is not None and body is not None:
                got.add(unpack(body), now, expected)
                progress_at = time.monotonic()
                if done_at is None and expected <= got.ids:
                    got.last_at = now
                    done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at > DUPLICATE_GRACE_S:
                break
            if time.monotonic() > deadline:
                break
            if done_at is None and time.monotonic() - progress_at > STALL_S:
                got.stalled = True
                break
            if done_at is None and method is None:
                alive()
        self.ch.cancel()
        return got


@dataclass
class Collected:
    ids: set[str] = field(default_factory=set)
    duplicates: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    strangers: int = 0
    stalled: bool = False
    first_at: float | None = None
    last_at: float | None = None

    def add(self, msg: Any, now: float, expected: set[str]) -> None:
        if not isinstance(msg, Result) or msg.task_id not in expected:
            self.strangers += 1
            return
        if msg.task_id in self.ids:
            self.duplicates.append(msg.task_id)
            return
        self.ids.add(msg.task_id)
        if msg.is_error:
            self.failures.append(f"{msg.task_id}: {msg.error_details} {msg.data[:300]}")
        if self.first_at is None:
            self.first_at = now


#: Parsl's worker pool (its workers are its children).
_POOL = "process_worker_pool"


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return list(proc.children(recursive=True))
    except psutil.Error:
        return []


class TreeSampler:
    """CPU and RSS of a process and its descendants, sampled in a thread.

    Parsl's LocalProvider starts the worker pool in the background (re-parented to init), so
    worker pools whose command line names `marker` (the endpoint's directory, which the pool's
    log dir is under) are adopted into the tree, with their workers."""

    def __init__(self, pid: int, marker: str) -> None:
        self.root = psutil.Process(pid)
        self.marker = marker
        self.adopted: dict[int, psutil.Process] = {}
        self._scans = 0
        self.cpu: dict[int, tuple[float, float]] = {}  # pid -> (user, system) seconds
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        self._adopt()
        seen = {p.pid for p in procs}
        for proc in list(self.adopted.values()):
            if proc.pid not in seen:
                procs += [proc, *_children(proc)]
                seen.update(p.pid for p in procs)
        rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
            self.cpu[proc.pid] = (t.user, t.system)
        self.peak_rss = max(self.peak_rss, rss)

    def _adopt(self) -> None:
        """Look for detached processes of the endpoint (every 5th sample: it scans them all)."""
        self._scans += 1
        if self._scans % 5 != 1:
            return
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.pid not in self.adopted and self.marker in cmdline and _POOL in cmdline:
                self.adopted[proc.pid] = proc

    def cpu_s(self) -> tuple[float, float]:
        """(user, system) CPU seconds of every process seen in the tree."""
        return sum(u for u, _ in self.cpu.values()), sum(s for _, s in self.cpu.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_S)


@dataclass
class Side:
    """One endpoint (ours or the official one) prepared for a drain: its task queue and how to
    start it (returns the pid of the tree to measure) and stop it."""

    label: str
    queue: str
    start: Callable[[], int]
    stop: Callable[[], None]
    proc_name: str
    #: A path in the command line of the endpoint's detached processes (Parsl's worker pool).
    marker: str
    extra_ids: set[str] = field(default_factory=set)


def prepare_ours(stack: DrainStack, engine: str, short: str, profile: str | None) -> Side:
    name = f"drain-{short}"
    stack.configure_endpoint(name, our_config(engine))
    endpoint_id = stack.start_endpoint(name, timeout=120)
    stack.stop_endpoint(name)
    queue = task_queue_of(stack, endpoint_id, set())
    proc = f"endpoint:{name}"
    cli = shutil.which("compute-endpoint") or str(Path(sys.executable).parent / "compute-endpoint")
    env = stack.client_env(stack.root / "user")
    spy: list[subprocess.Popen[bytes]] = []

    def start() -> int:
        pid = stack.spawn(proc, [cli, "start", name], env)
        if profile:
            spy.append(start_py_spy(pid, Path(profile) / f"{short}-{len(spy)}.txt"))
        return pid

    def stop() -> None:
        while spy:
            # py-spy writes its profile when interrupted, before the endpoint goes.
            spy[-1].send_signal(signal.SIGINT)
            spy.pop().wait(60)
        stop_tree(stack, proc)

    return Side("ours", queue, start, stop, proc, str(stack.root / "user" / name))


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy over the endpoint's whole tree (workers too), collapsed stacks into `out`."""
    pyspy = str(Path(sys.executable).parent / "py-spy")
    # --gil: only the thread holding the GIL is sampled, so waits do not show as work.
    argv = [pyspy, "record", "--subprocesses", "--gil", "-r", "100", "-f", "raw", "-o", str(out)]
    return subprocess.Popen([*argv, "--pid", str(pid)], stdout=subprocess.DEVNULL)


def prepare_official(
    stack: DrainStack, peer_bin: Path, engine: str, short: str, work: Work, again: int = 0
) -> Side:
    name = f"off-drain-{short}" + (f"-{again}" if again else "")
    manager_id = stack.start_official_endpoint(peer_bin, name, official_template(engine))
    before = stack.queue_names()
    submit_one(stack, manager_id, work, wait=True)
    queue = task_queue_of(stack, None, before)
    proc = f"official:{name}"
    stop_tree(stack, proc)
    cli = str(peer_bin.absolute() / "globus-compute-endpoint")
    env = stack.client_env(stack.root / "official-user")
    extra: set[str] = set()

    def start() -> int:
        # Its user endpoint starts on a command the service sends on a submit: this one task
        # (queued after the N) makes it send one, waiting for the manager on its queue.
        extra.clear()
        extra.add(submit_one(stack, manager_id, work, wait=False))
        return stack.spawn(proc, [cli, "start", name], env)

    def stop() -> None:
        stop_tree(stack, proc)

    # Its user endpoints live beside the manager, under the official tools' user dir.
    return Side("official", queue, start, stop, proc, str(stack.root / "official-user"), extra)


def submit_one(stack: DrainStack, endpoint_id: str, work: Work, wait: bool) -> str:
    """One task through the service's submit route; with `wait`, until its result is stored."""
    body = {"create_queue": True, "tasks": {work.function_id: [work.payload]}}
    out = stack.api("POST", f"/v3/endpoints/{endpoint_id}/submit", body)
    task_id = str(out["tasks"][work.function_id][0])
    deadline = time.monotonic() + 300
    while wait:
        status = stack.get(f"/v2/tasks/{task_id}")
        if status.get("status") == "success":
            break
        if status.get("status") == "failed" or time.monotonic() > deadline:
            sys.exit(f"warm-up task {task_id} did not succeed: {status}")
        time.sleep(0.2)
    return task_id


def stop_tree(stack: DrainStack, proc_name: str) -> None:
    """Stop an endpoint and wait until every process of its tree is gone."""
    popen = stack.procs.get(proc_name)
    if popen is None:
        return
    try:
        tree = [psutil.Process(popen.pid), *psutil.Process(popen.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if popen.poll() is None and proc_name.startswith("official:"):
        os.killpg(popen.pid, signal.SIGTERM)
    stack._terminate(proc_name)
    _gone, alive = psutil.wait_procs(tree, timeout=30)
    for p in alive:
        p.kill()


def drain(stack: DrainStack, side: Side, work: Work, n: int) -> dict[str, float]:
    ids = publish_tasks(stack.rabbit.url, side.queue, work, n)
    with ResultTap(stack.rabbit.url) as tap:
        t0 = time.time()
        pid = side.start()
        expected = ids | side.extra_ids
        with TreeSampler(pid, side.marker) as sampler:
            got = tap.collect(expected, DEADLINE_S, lambda: stack.check_alive(side.proc_name))
            sampler.sample()
            (user_s, sys_s), peak = sampler.cpu_s(), sampler.peak_rss
        if got.stalled or not expected <= got.ids:
            # Read before stop: a stalled endpoint's own words on what it waits for.
            print(side_logs(stack, side), file=sys.stderr, flush=True)
        side.stop()
    if got.stalled:
        raise Stalled(
            f"{side.label}: no new result for {STALL_S:g} s"
            f" ({len(got.ids & expected)} of {len(expected)} in)"
        )
    check_exactly_once(side.label, got, expected)
    assert got.first_at is not None and got.last_at is not None
    count = len(expected)
    return {
        "tasks_per_s": count / (got.last_at - t0),
        "steady_tasks_per_s": (count - 1) / max(got.last_at - got.first_at, 1e-9),
        "cpu_s_per_1k": (user_s + sys_s) / count * 1000,
        "sys_share": sys_s / max(user_s + sys_s, 1e-9),
        "peak_rss_mb": peak / 1e6,
        "first_result_s": got.first_at - t0,
        "seconds": got.last_at - t0,
    }


def side_logs(stack: DrainStack, side: Side, tail: int = 2500) -> str:
    """The tail of the endpoint's console output and of its newest log files."""
    parts = [f"== {side.proc_name} console ==", stack.log_text(side.proc_name)[-tail:]]
    logs = sorted(Path(side.marker).rglob("*.log"), key=lambda p: p.stat().st_mtime)
    for path in logs[-3:]:
        parts += [f"== {path} ==", path.read_text(errors="replace")[-tail:]]
    return "\n".join(parts)


def check_exactly_once(label: str, got: Collected, expected: set[str]) -> None:
    missing = expected - got.ids
    problems = []
    if missing:
        problems.append(f"{len(missing)} result(s) missing, e.g. {sorted(missing)[:3]}")
    if got.duplicates:
        problems.append(f"{len(got.duplicates)} duplicated, e.g. {got.duplicates[:3]}")
    if got.failures:
        problems.append(f"{len(got.failures)} failed, e.g. {got.failures[:2]}")
    if problems:
        sys.exit(f"{label}: results not exactly once: " + "; ".join(problems))


# (figure, higher is better)
FIGURES = (
    ("tasks_per_s", True),
    ("steady_tasks_per_s", True),
    ("cpu_s_per_1k", False),
    ("peak_rss_mb", False),
)


def summary(result: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in result.items())


@dataclass
class Run:
    """What every drain of one run shares: its stack, work and options."""

    stack: DrainStack
    work: Work
    peer_bin: Path
    args: argparse.Namespace

    def prepare(self, label: str, engine: str, short: str, again: int = 0) -> Side:
        if label == "ours":
            return prepare_ours(self.stack, engine, short, self.args.py_spy)
        return prepare_official(self.stack, self.peer_bin, engine, short, self.work, again)

    def side(self, label: str, engine: str, short: str, tag: str) -> dict[str, float]:
        """`--repeat` drains of one side; its median run."""
        runs = []
        side = self.prepare(label, engine, short)
        for _ in range(self.args.repeat):
            try:
                runs.append(drain(self.stack, side, self.work, self.args.tasks))
            except Stalled as e:
                if label == "ours" or not self.args.quick:
                    raise
                # Quick mode (CI) checks this benchmark, not the peer: a stalled official
                # endpoint (its logs above, on stderr) gets one fresh try; a second stall ends
                # the run like any other.
                print(f"# {tag} {e}; preparing it again", flush=True)
                side = self.prepare(label, engine, short, again=1)
                runs.append(drain(self.stack, side, self.work, self.args.tasks))
            print(f"# {tag} {label}: {summary(runs[-1])}", flush=True)
        return median_run(runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--peer-python", required=True)
    p.add_argument("--tasks", type=int, default=20_000)
    p.add_argument("--work", choices=sorted(WORKS), default="noop")
    p.add_argument("--engines", default="thread,process,gce")
    p.add_argument("--sides", default="ours,official", help="ours, official or both")
    p.add_argument("--repeat", type=int, default=1, help="drains per side and engine")
    p.add_argument("--quick", action="store_true", help="500 tasks, every engine (CI)")
    p.add_argument("--py-spy", metavar="DIR", help="record ours under py-spy into DIR")
    args = p.parse_args()
    if args.quick:
        args.tasks = 500
    peer_bin = Path(args.peer_python).absolute().parent  # not resolve(): keep the venv path
    suffix = "" if args.work == "noop" else f"-{args.work}"
    with DrainStack() as stack:
        stack.start_service()
        work = prepare_work(stack, args.peer_python, WORKS[args.work] or 0.0)
        run = Run(stack, work, peer_bin, args)
        for short in args.engines.split(","):
            tag = f"{short}{suffix}"
            results = {
                label: run.side(label, ENGINES[short], short, tag)
                for label in args.sides.split(",")
            }
            if len(results) == 2:
                for fig, better_high in FIGURES:
                    ours, off = results["ours"][fig], results["official"][fig]
                    print(line(f"drain.{tag}.{fig}", ours, off, better_high), flush=True)
    return 0


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median run by tasks_per_s (the machine is shared: one run can be unlucky)."""
    ordered = sorted(runs, key=lambda r: r["tasks_per_s"])
    return ordered[len(ordered) // 2]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Stalled as stalled:
        sys.exit(str(stalled))
