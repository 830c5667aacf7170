"""Reliability case 2 through a loopback TCP proxy (tests/fault/proxy.py): the endpoint's broker
connection is reset, or silently black-holed, while tasks are in flight.

Only the endpoint goes through the proxy; the web service and the checker reach the broker
directly. Every run prints
`CASE submitted=N results=N lost=0 duplicated=0 unexpected=0 redelivered=N` and
fails on any loss, duplicate, unexpected result or failure. `FAULT_SEED=n` replays one seed.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterator

import pytest

from tests.fault.harness import FaultStack, Outcome, configured_stack, report, seeds, values
from tests.fault.proxy import BrokerProxy

pytestmark = pytest.mark.fault

RUNS = int(os.environ.get("FAULT_RUNS", "2"))
ENDPOINT = "fault-net"
# heartbeat_threshold 10 (the floor, 2 x heartbeat_period): AMQP heartbeats of 10 s, so pika
# declares a silent broker dead 15 to 30 s into a partition instead of after minutes.
HEARTBEAT_THRESHOLD_S = 10
CONFIG = f"""\
engine:
  type: ProcessPoolEngine
  max_workers: 2
heartbeat_period: 5
heartbeat_threshold: {HEARTBEAT_THRESHOLD_S}
"""
# pika checks every threshold + 5 s for bytes received since its last check: a stall must
# outlast two checks (and some slack) for pika to notice it.
DETECT_WITHIN_S = 2 * (HEARTBEAT_THRESHOLD_S + 5) + 10
# What the endpoint's AMQP session logs (endpoint/amqp/session.py) and pika's heartbeat verdict.
CLOSED = "connection closed:"
CONNECTED = re.compile(r"amqp-\w+: connected \(generation \d+\)")
MISSED_HEARTBEATS = "missed heartbeats"


@pytest.fixture(scope="module")
def stack() -> Iterator[FaultStack]:
    with configured_stack(ENDPOINT, CONFIG, proxied=True) as s:
        yield s


@pytest.fixture
def endpoint_id(stack: FaultStack) -> Iterator[str]:
    ep = stack.start_endpoint(ENDPOINT)
    yield ep
    stack.stop_endpoint(ENDPOINT)


def proxy_of(stack: FaultStack) -> BrokerProxy:
    assert stack.proxy is not None
    return stack.proxy


def check(case: str, outcome: Outcome, expected: dict[str, int]) -> None:
    """Exactly one result per task, none a failure, each the task's own value."""
    line = report(case, outcome)
    assert (outcome.lost, outcome.duplicated, outcome.unexpected) == (0, 0, 0), line
    assert not outcome.failures(), [r.data for r in outcome.failures()][:1]
    assert values(outcome.results) == expected, case


class EndpointLog:
    """The endpoint's log from now on: the log file spans the module."""

    def __init__(self, stack: FaultStack) -> None:
        self._stack = stack
        self._start = len(stack.log_text(f"endpoint:{ENDPOINT}"))

    def text(self) -> str:
        return self._stack.log_text(f"endpoint:{ENDPOINT}")[self._start :]

    def wait_for(self, needle: str, until: float) -> float | None:
        """The monotonic time `needle` was seen, or None if not by `until`."""
        while True:
            if needle in self.text():
                return time.monotonic()
            if time.monotonic() >= until:
                return None
            time.sleep(0.25)


def assert_same_endpoint_process(stack: FaultStack) -> None:
    """Recovery was the endpoint's own doing: the process we started is still the one running."""
    proc = stack.procs[f"endpoint:{ENDPOINT}"]
    assert proc.poll() is None, f"the endpoint exited with {proc.returncode}"


def run_sleepers(
    stack: FaultStack, endpoint_id: str, n: int, secs: float, group: str | None = None
) -> tuple[dict[str, int], str]:
    """Submit `n` sleepers; return {task id: the value it must return} and the task group."""
    ids, group = stack.submit(endpoint_id, "work", [(i, secs) for i in range(n)], group=group)
    return {t: i for i, t in enumerate(ids)}, group


@pytest.mark.parametrize("seed", seeds(RUNS))
def test_case02_proxy_drop_resets_and_refuses_for_10s(
    stack: FaultStack, endpoint_id: str, seed: int
) -> None:
    rng = random.Random(seed)
    log = EndpointLog(stack)
    ids, group = run_sleepers(stack, endpoint_id, 80, 0.1)  # ~4 s of work on 2 workers
    time.sleep(rng.uniform(0.0, 2.0))
    dropped_at = time.monotonic()
    proxy_of(stack).drop(refuse_for=10.0)
    # Tasks submitted while the endpoint cannot connect wait in its queue.
    more, _ = run_sleepers(stack, endpoint_id, 20, 0.05, group)
    ids |= more
    outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=150))
    elapsed = time.monotonic() - dropped_at
    check(f"case02-proxy-drop seed={seed}", outcome, ids)
    text = log.text()
    print(
        f"case02-proxy-drop seed={seed} results_after_drop_s={elapsed:.1f} "
        f"refused={proxy_of(stack).refused} reconnect_attempts={text.count('reconnecting in')}"
    )
    assert CLOSED in text, f"the endpoint did not notice the reset:\n{text[-3000:]}"
    after_close = text[text.index(CLOSED) :]
    assert CONNECTED.search(after_close), f"no reconnect after the drop:\n{text[-3000:]}"
    assert_same_endpoint_process(stack)


def stall_mid_flight(
    stack: FaultStack, endpoint_id: str, seed: int, stall_s: float
) -> tuple[Outcome, dict[str, int], float | None]:
    """Black-hole the endpoint's network for `stall_s` while tasks run and more arrive; return
    what came back, what was expected and when the endpoint's log said its heartbeats failed."""
    rng = random.Random(seed)
    log = EndpointLog(stack)
    ids, group = run_sleepers(stack, endpoint_id, 40, 0.5)  # ~10 s of work on 2 workers
    time.sleep(rng.uniform(0.5, 3.0))
    stalled_at = time.monotonic()
    proxy_of(stack).stall(stall_s)
    # The broker pushes these into the partition: unacked there, requeued when it gives the
    # connection up, redelivered on the new one (or acked late, if the connection survives).
    time.sleep(rng.uniform(1.0, 5.0))
    more, _ = run_sleepers(stack, endpoint_id, 20, 0.05, group)
    ids |= more
    seen = log.wait_for(MISSED_HEARTBEATS, until=stalled_at + stall_s)
    detected = None if seen is None else seen - stalled_at
    remaining = stall_s - (time.monotonic() - stalled_at)
    outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=remaining + 150))
    shown = "never" if detected is None else f"{detected:.1f}"
    print(
        f"case02-proxy-stall-{stall_s:g}s seed={seed} heartbeat_timeout_after_s={shown} "
        f"results_after_stall_start_s={time.monotonic() - stalled_at:.1f} "
        f"reconnect_attempts={log.text().count('reconnecting in')}"
    )
    return outcome, ids, detected


@pytest.mark.parametrize("seed", seeds(1))
def test_case02_proxy_stall_60s_is_detected_by_heartbeats(
    stack: FaultStack, endpoint_id: str, seed: int
) -> None:
    stall_s = float(os.environ.get("FAULT_STALL_S", "60"))
    assert stall_s > DETECT_WITHIN_S, f"FAULT_STALL_S={stall_s:g}: too short for pika to notice"
    log = EndpointLog(stack)
    outcome, ids, detected = stall_mid_flight(stack, endpoint_id, seed, stall_s)
    check(f"case02-proxy-stall-{stall_s:g}s seed={seed}", outcome, ids)
    text = log.text()
    # The log is watched until the network heals: noticed at all is noticed during the stall.
    assert detected is not None, f"no heartbeat timeout during the stall:\n{text[-3000:]}"
    # It reconnected on its own once the network healed, after the dead connection closed.
    after_close = text[text.index(MISSED_HEARTBEATS) :]
    assert CONNECTED.search(after_close), f"no reconnect after the stall:\n{text[-3000:]}"
    assert_same_endpoint_process(stack)


def broker_log(stack: FaultStack) -> str:
    path = stack.rabbit.state_dir / "log" / f"{stack.rabbit.node}.log"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.parametrize("seed", seeds(1))
def test_case02_proxy_stall_near_heartbeat_timeouts(
    stack: FaultStack, endpoint_id: str, seed: int
) -> None:
    # Both peers check their heartbeat clocks on ticks counted from the connection's start
    # (pika every 15 s, RabbitMQ every 10 s, needing two silent ticks). A 20 to 30 s stall
    # at a random phase of those clocks makes the endpoint, the broker, both or neither give
    # the connection up before the network heals; whichever it is, every task gets one result.
    rng = random.Random(seed)
    proxy = proxy_of(stack)
    assert proxy.last_accepted is not None
    log, broker_start = EndpointLog(stack), len(broker_log(stack))
    stall_at = proxy.last_accepted + rng.uniform(0.0, 30.0)
    stall_s = rng.uniform(20.0, 30.0)
    time.sleep(max(0.0, stall_at - 2.0 - time.monotonic()))
    ids, group = run_sleepers(stack, endpoint_id, 20, 0.5)  # running when the stall begins
    time.sleep(max(0.0, stall_at - time.monotonic()))
    proxy.stall(stall_s)
    time.sleep(rng.uniform(1.0, 5.0))
    more, _ = run_sleepers(stack, endpoint_id, 20, 0.05, group)  # delivered into the partition
    ids |= more
    outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=stall_s + 150))
    case = f"case02-proxy-stall-{stall_s:.0f}s seed={seed}"
    check(case, outcome, ids)
    endpoint_gave_up = MISSED_HEARTBEATS in log.text()
    broker_gave_up = "missed heartbeats from client" in broker_log(stack)[broker_start:]
    print(f"{case} endpoint_gave_up={endpoint_gave_up} broker_gave_up={broker_gave_up}")
    assert_same_endpoint_process(stack)


@pytest.mark.parametrize("seed", seeds(RUNS))
def test_case02_proxy_short_stall_needs_no_reconnect(
    stack: FaultStack, endpoint_id: str, seed: int
) -> None:
    # 4 s is well inside the 10 s heartbeat timeout (pika looks every 15 s): both sides must
    # ride it out on the same connection.
    rng = random.Random(seed)
    log = EndpointLog(stack)
    ids, group = run_sleepers(stack, endpoint_id, 40, 0.2)  # ~4 s of work on 2 workers
    time.sleep(rng.uniform(0.2, 2.0))
    proxy_of(stack).stall(4.0)
    more, _ = run_sleepers(stack, endpoint_id, 10, 0.05, group)
    ids |= more
    outcome = Outcome(set(ids), stack.collect(group, len(ids), timeout=120))
    check(f"case02-proxy-stall-4s seed={seed}", outcome, ids)
    text = log.text()
    assert CLOSED not in text and "reconnecting" not in text, text[-3000:]
    assert_same_endpoint_process(stack)
