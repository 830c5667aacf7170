"""Idle shutdown counting (endpoint.runtime.idle)."""

from __future__ import annotations

from endpoint.runtime.idle import IdleTracker


def test_disabled_when_soft_is_zero() -> None:
    t = IdleTracker(soft=0, hard=1)
    assert all(t.tick(0, 0, 0) is None for _ in range(100))


def test_soft_limit_counts_quiet_heartbeats_with_nothing_outstanding() -> None:
    t = IdleTracker(soft=3, hard=100)
    assert t.tick(5, 5, 0) is None  # work moved since the start: not idle
    assert t.tick(5, 5, 0) is None
    assert t.tick(5, 5, 0) is None
    reason = t.tick(5, 5, 0)
    assert reason is not None and "idle_heartbeats_soft=3" in reason


def test_never_used_endpoint_meets_the_soft_limit() -> None:
    # Upstream only the hard limit (about 48 h) applies here; we apply the soft one too.
    t = IdleTracker(soft=2, hard=5760)
    assert t.tick(0, 0, 0) is None
    assert t.tick(0, 0, 0) is not None


def test_movement_resets_both_counts() -> None:
    t = IdleTracker(soft=2, hard=10)
    t.tick(0, 0, 0)
    assert t.tick(1, 0, 1) is None
    assert (t.soft_count, t.hard_count) == (0, 0)


def test_outstanding_tasks_block_soft_but_not_hard() -> None:
    t = IdleTracker(soft=2, hard=4)
    verdicts = [t.tick(1, 0, 1) for _ in range(6)]
    # The first tick saw movement (0 -> 1 received); then 5 quiet ticks; hard limit is
    # max(soft + 1, hard) = 4, so the 5th quiet heartbeat passes it.
    assert verdicts[:5] == [None] * 5
    assert verdicts[5] is not None and "idle_heartbeats_hard=4" in verdicts[5]


def test_hard_limit_is_at_least_soft_plus_one() -> None:
    assert IdleTracker(soft=10, hard=3).hard_limit == 11


def test_title_hint_counts_down() -> None:
    t = IdleTracker(soft=3, hard=100)
    t.tick(0, 0, 0)
    assert t.title_hint(30.0) == " [idle; shut down in 60s]"
    t2 = IdleTracker(soft=3, hard=5)
    t2.tick(1, 0, 1)
    t2.tick(1, 0, 1)
    assert "possibly idle" in t2.title_hint(1.0)
