"""The reliability cases (shared/reliability.md), each over several random seeds.

Every run prints `CASE submitted=N results=N lost=0 duplicated=0 unexpected=0 redelivered=N`
and fails on any loss, duplicate or unexpected result. `FAULT_SEED=n` replays one seed.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from devstack.stack import local_gce_engine
from endpoint.runtime.journal import SPILL_BYTES
from tests.fault.harness import FaultStack, Outcome, configured_stack, report, seeds, values

pytestmark = pytest.mark.fault

RUNS = int(os.environ.get("FAULT_RUNS", "2"))
ENDPOINT = "fault"
CONFIG = """\
engine:
  type: ProcessPoolEngine
  max_workers: 2
heartbeat_period: 5
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[FaultStack]:
    with configured_stack(ENDPOINT, CONFIG) as s:
        yield s


@pytest.fixture
def endpoint_id(stack: FaultStack) -> Iterator[str]:
    ep = stack.start_endpoint(ENDPOINT)
    yield ep
    stack.stop_endpoint(ENDPOINT)


def kill9(stack: FaultStack) -> None:
    proc = stack.procs.pop(f"endpoint:{ENDPOINT}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def check(case: str, outcome: Outcome) -> None:
    line = report(case, outcome)
    assert (outcome.lost, outcome.duplicated, outcome.unexpected) == (0, 0, 0), line


def assert_codes(outcome: Outcome, codes: set[str]) -> None:
    """Every failure carries one of `codes`: a clear reason, never a vague one."""
    for failure in outcome.failures():
        assert failure.error_details is not None, failure.data
        assert failure.error_details.get("code") in codes, failure.data


def run_sleepers(stack: FaultStack, endpoint_id: str, n: int, secs: float) -> tuple[list[str], str]:
    return stack.submit(endpoint_id, "work", [(i, secs) for i in range(n)], group=None)


@pytest.mark.parametrize("seed", seeds(RUNS))
def test_case01_kill9_endpoint_mid_flight_then_restart(
    stack: FaultStack, endpoint_id: str, seed: int
) -> None:
    rng = random.Random(seed)
    ids, group = run_sleepers(stack, endpoint_id, 60, 0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    kill9(stack)
    stack.start_endpoint(ENDPOINT)
    outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=90))
    check(f"case01 seed={seed}", outcome)
    # A task that was running when the endpoint died fails with the reason, never silently.
    assert_codes(outcome, {"EndpointInterrupted"})
    done = values(outcome.results)
    assert all(done[t] == i for i, t in enumerate(ids) if t in done)


#: Where case 1 kills the endpoint, by its own fault hook (endpoint/runtime/faults.py), and how many
#: passes through that point to let by first (the seed picks within the range).
KILL_POINTS = {
    "delivered": (1, 3),
    "journaled": (1, 3),
    "acked": (1, 3),
    "result-journaled": (2, 10),
    "published": (2, 10),
}


@pytest.mark.parametrize("seed", seeds(1))
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_case01_kill9_at_each_step_of_the_task_path(
    stack: FaultStack, point: str, seed: int
) -> None:
    n = random.Random(seed).randint(*KILL_POINTS[point])
    fault = {"COMPUTE_ENDPOINT_FAULT": f"{point}:{n}"}
    endpoint_id = stack.start_endpoint(ENDPOINT, extra_env=fault)
    ids, group = run_sleepers(stack, endpoint_id, 15, 0.02)
    for _ in range(3):  # separate arrivals, so each point is passed several times
        time.sleep(0.2)
        ids += stack.submit(endpoint_id, "work", [(i, 0.02) for i in range(15)], group)[0]
    proc = stack.procs[f"endpoint:{ENDPOINT}"]  # left there on a timeout: close() ends it
    # The hook kills the endpoint with SIGKILL: -9 proves it died at the point, not elsewhere.
    assert proc.wait(60) == -signal.SIGKILL, stack.log_text(f"endpoint:{ENDPOINT}")[-2000:]
    stack.procs.pop(f"endpoint:{ENDPOINT}")
    log_start = len(stack.log_text(f"endpoint:{ENDPOINT}"))
    stack.start_endpoint(ENDPOINT)
    try:
        outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=90))
    finally:
        stack.stop_endpoint(ENDPOINT)
    check(f"case01 point={point}:{n} seed={seed}", outcome)
    if point in ("result-journaled", "published"):
        # The restart re-sent journaled results (for "published" the broker already had them):
        # the duplicate path really ran, and still nothing arrived twice.
        recovered = re.search(
            r"(\d+) results to re-send", stack.log_text(f"endpoint:{ENDPOINT}")[log_start:]
        )
        assert recovered and int(recovered.group(1)) > 0
    # Only a task that was running at the kill may fail, and then with the reason.
    assert_codes(outcome, {"EndpointInterrupted"})
    done = values(outcome.results)
    assert all(done[t] == i % 15 for i, t in enumerate(ids) if t in done)


def test_case01_kill9_with_large_tasks_whose_bodies_live_beside_the_journal(
    stack: FaultStack,
) -> None:
    """Bodies over SPILL_BYTES are files beside the journal (endpoint/runtime/journal.py). A
    kill -9 while most such tasks wait for a worker: the restart runs them from those files,
    loses none, runs none twice, and once every result is confirmed no body file is left."""
    endpoint_id = stack.start_endpoint(ENDPOINT)
    bodies = stack.root / "user" / ENDPOINT / "journal.db-bodies"
    pad = b"p" * (SPILL_BYTES + 1)
    ids, group = stack.submit(endpoint_id, "padded", [(i, 0.5, pad) for i in range(12)], None)
    deadline = time.monotonic() + 60
    while len(list(bodies.iterdir())) < 8:  # journaled (and acked) while 2 workers are busy
        assert time.monotonic() < deadline, "the large tasks were never journaled"
        time.sleep(0.05)
    kill9(stack)
    log_start = len(stack.log_text(f"endpoint:{ENDPOINT}"))
    stack.start_endpoint(ENDPOINT)
    try:
        outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=120))
    finally:
        stack.stop_endpoint(ENDPOINT)
    check("case01 large bodies", outcome)
    assert_codes(outcome, {"EndpointInterrupted"})
    ran = re.search(r"(\d+) to run", stack.log_text(f"endpoint:{ENDPOINT}")[log_start:])
    assert ran and int(ran.group(1)) >= 6  # the waiting tasks ran from their files
    done = values(outcome.results)
    assert all(done[t] == i for i, t in enumerate(ids) if t in done)
    assert not list(bodies.iterdir())


#: Broker outages of 10 s (several seeds) and one of 60 s: longer than every reconnect backoff
#: step, so the endpoint must keep trying rather than give up.
OUTAGES = [(10.0, seed) for seed in seeds(RUNS)] + [(60.0, seeds(1)[0])]


@pytest.mark.parametrize(("outage_s", "seed"), OUTAGES)
def test_case02_broker_outage_is_survived_without_help(
    stack: FaultStack, endpoint_id: str, outage_s: float, seed: int
) -> None:
    rng = random.Random(seed)
    ids, group = run_sleepers(stack, endpoint_id, 80, 0.05)
    time.sleep(rng.uniform(0.0, 1.0))
    stack.rabbit.stop_app()
    time.sleep(outage_s)
    stack.rabbit.start_app()
    outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=120 + outage_s))
    check(f"case02 outage={outage_s:.0f}s seed={seed}", outcome)
    assert not outcome.failures()


def test_case03_broker_restart_with_tasks_queued(stack: FaultStack) -> None:
    endpoint_id = stack.start_endpoint(ENDPOINT)
    stack.stop_endpoint(ENDPOINT)
    ids, group = run_sleepers(stack, endpoint_id, 50, 0.01)  # queued: nobody consumes
    stack.rabbit.stop_app()
    stack.rabbit.start_app()
    stack.start_endpoint(ENDPOINT)
    try:
        outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=120))
    finally:
        stack.stop_endpoint(ENDPOINT)
    check("case03", outcome)
    assert not outcome.failures()


def test_case08_poison_task_fails_once_and_others_are_unaffected(
    stack: FaultStack, endpoint_id: str
) -> None:
    poison, group = stack.submit(endpoint_id, "poison", [(0,)], group=None)
    ids, _ = stack.submit(endpoint_id, "work", [(i, 0.01) for i in range(20)], group=group)
    outcome = Outcome(set(poison + ids), stack.collect(group, 21, timeout=90))
    check("case08", outcome)
    failed = outcome.failures()
    assert [r.task_id for r in failed] == poison
    assert failed[0].error_details is not None
    assert failed[0].error_details.get("code") == "WorkerLost"


@pytest.mark.parametrize("seed", seeds(RUNS))
def test_case09_sigterm_while_tasks_keep_arriving(stack: FaultStack, seed: int) -> None:
    rng = random.Random(seed)
    endpoint_id = stack.start_endpoint(ENDPOINT)
    submitted: list[str] = []
    group: list[str] = []

    def feed() -> None:
        for _ in range(10):
            current = group[0] if group else None
            ids, tg = stack.submit(endpoint_id, "work", [(i, 0.02) for i in range(10)], current)
            group[:] = [tg]
            submitted.extend(ids)
            time.sleep(0.1)

    feeder = threading.Thread(target=feed)
    feeder.start()
    time.sleep(rng.uniform(0.2, 0.8))
    stack.stop_endpoint(ENDPOINT)  # SIGTERM, waits for a clean exit
    feeder.join()
    stack.start_endpoint(ENDPOINT)
    try:
        outcome = Outcome(set(submitted), stack.collect(group[0], len(submitted), timeout=120))
    finally:
        stack.stop_endpoint(ENDPOINT)
    check(f"case09 seed={seed}", outcome)
    assert not outcome.failures()


@pytest.mark.parametrize("seed", seeds(RUNS))
def test_case12_web_service_restart_while_results_flow(
    stack: FaultStack, endpoint_id: str, seed: int
) -> None:
    rng = random.Random(seed)
    ids, group = run_sleepers(stack, endpoint_id, 100, 0.02)
    time.sleep(rng.uniform(0.0, 1.0))
    stack.stop_service()
    time.sleep(1.0)
    stack.start_service()
    outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=120))
    check(f"case12 seed={seed}", outcome)
    assert not outcome.failures()


def _worker_pids(stack: FaultStack) -> list[int]:
    import psutil

    root = psutil.Process(stack.procs[f"endpoint:{ENDPOINT}"].pid)
    return [
        p.pid for p in root.children(recursive=True) if "endpoint.worker" in " ".join(p.cmdline())
    ]


@pytest.mark.parametrize("seed", seeds(RUNS))
def test_case04_killed_worker_fails_its_task_with_the_cause(
    stack: FaultStack, endpoint_id: str, seed: int
) -> None:
    rng = random.Random(seed)
    ids, group = run_sleepers(stack, endpoint_id, 12, 0.4)
    time.sleep(rng.uniform(0.2, 1.0))
    victims = _worker_pids(stack)
    assert victims, "no worker processes found"
    os.kill(rng.choice(victims), signal.SIGKILL)
    outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=60))  # a deadline
    check(f"case04 seed={seed}", outcome)
    assert_codes(outcome, {"WorkerLost"})


def test_case10_two_starts_at_once_run_one_instance(stack: FaultStack) -> None:
    import subprocess

    from devstack.stack import _bin

    env = stack.client_env(stack.root / "user")
    argv = [_bin("compute-endpoint"), "start", ENDPOINT]
    first = subprocess.Popen(argv, env=env, start_new_session=True)
    second = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while first.poll() is None and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        loser, winner = (first, second) if first.poll() is not None else (second, first)
        assert loser.wait(10) == 73  # EX_CANTCREAT: the other one holds the lock
        assert winner.poll() is None
        stop = subprocess.run(
            [_bin("compute-endpoint"), "stop", ENDPOINT], env=env, timeout=90, check=False
        )
        assert stop.returncode == 0
        assert winner.wait(10) == 0  # one stop sufficed
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_case11_disallowed_serializer_is_a_clear_error_not_a_lost_worker(
    stack: FaultStack,
) -> None:
    strict = "fault-strict"
    stack.configure_endpoint(
        strict,
        CONFIG.replace(
            "  max_workers: 2\n",
            "  max_workers: 2\n  allowed_serializers:\n"
            "    - globus_compute_sdk.serialize.PureSourceTextInspect\n"
            "    - globus_compute_sdk.serialize.JSONData\n",
        ),
    )
    endpoint_id = stack.start_endpoint(strict)
    try:
        ids, group = run_sleepers(stack, endpoint_id, 3, 0.0)  # DillCode + DillDataBase64
        outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=60))  # a deadline
    finally:
        stack.stop_endpoint(strict)
    check("case11", outcome)
    assert len(outcome.failures()) == 3
    assert_codes(outcome, {"DeserializationError"})


def test_case07_task_longer_than_consumer_timeout_loses_no_channel(
    stack: FaultStack, endpoint_id: str
) -> None:
    # RabbitMQ checks consumer timeouts about once a minute: the long task must outlive a check.
    # The stack's endpoint log spans the module (earlier cases stop the broker): read only ours.
    log_start = len(stack.log_text(f"endpoint:{ENDPOINT}"))
    long_ids, group = stack.submit(endpoint_id, "work", [(0, 75.0)], group=None)
    ids, _ = stack.submit(endpoint_id, "work", [(i, 0.01) for i in range(1, 200)], group=group)
    outcome = Outcome(set(long_ids + ids), stack.collect(group, 200, timeout=150))
    check("case07", outcome)
    assert not outcome.failures()
    log = stack.log_text(f"endpoint:{ENDPOINT}")[log_start:]
    assert "PRECONDITION_FAILED" not in log and "reconnecting" not in log


GCE_CONFIG = "engine:\n" + local_gce_engine(min_blocks=1) + "heartbeat_period: 5\n"


def _descendants_matching(pid: int, needle: str) -> list[int]:
    import psutil

    return [
        p.pid
        for p in psutil.Process(pid).children(recursive=True)
        if needle in " ".join(p.cmdline()) or needle in p.name()
    ]


def engine_fault_case(
    stack: FaultStack, case: str, config: str, secs: float, kill: Callable[[str], list[int]]
) -> None:
    """Warm a GCE endpoint up, kill part of its engine mid-flight, check results, then check
    that the endpoint recovered: tasks submitted afterwards succeed."""
    name = f"fault-{case}"
    stack.configure_endpoint(name, config)
    endpoint_id = stack.start_endpoint(name)
    try:
        _warm, group = stack.submit(endpoint_id, "work", [(0, 0.0)], group=None)
        assert len(stack.collect(group, 1, timeout=60)) == 1  # the block is up
        ids, _ = stack.submit(endpoint_id, "work", [(i, secs) for i in range(20)], group=group)
        time.sleep(0.6)
        victims = kill(name)
        assert victims, f"{case}: nothing to kill"
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=120))
        check(case, outcome)
        assert_codes(outcome, {"EngineFailure", "WorkerLost"})
        later, _ = stack.submit(endpoint_id, "work", [(i, 0.0) for i in range(5)], group=group)
        after = Outcome(set(later), stack.collect(group, len(later), timeout=120))
        check(f"{case}-after", after)
        assert not after.failures(), [r.data for r in after.failures()][:1]
    finally:
        stack.stop_endpoint(name)


def test_case05_killed_interchange_fails_its_tasks_and_the_engine_restarts(
    stack: FaultStack,
) -> None:
    def interchange(name: str) -> list[int]:
        return _descendants_matching(stack.procs[f"endpoint:{name}"].pid, "interchange")[:1]

    engine_fault_case(stack, "case05", GCE_CONFIG, 0.2, interchange)


def _block_processes(ep_dir: str) -> list[int]:
    """The endpoint's worker pools and everything under them (their spawned workers and
    multiprocessing's resource tracker): a batch system ends a whole job, and killing only
    the pool would leave those behind as orphans."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "process_worker_pool" in cmdline and ep_dir in cmdline:
            found.append(proc.pid)
            with contextlib.suppress(psutil.Error):
                found += [child.pid for child in proc.children(recursive=True)]
    return found


def test_case06_block_killed_while_tasks_run_gives_results_not_silence(
    stack: FaultStack,
) -> None:
    # Like a batch job hitting its walltime: the whole worker pool of the block dies at once.
    fast_detection = "  heartbeat_period: 1\n  heartbeat_threshold: 4\n"
    config = GCE_CONFIG.replace("  address: 127.0.0.1\n", "  address: 127.0.0.1\n" + fast_detection)

    def worker_pools(name: str) -> list[int]:
        # LocalProvider detaches its blocks from the endpoint's process tree: find this
        # endpoint's worker pools by their log dir, which lies in its endpoint directory.
        return _block_processes(str(stack.root / "user" / name))

    engine_fault_case(stack, "case06", config, 0.5, worker_pools)
