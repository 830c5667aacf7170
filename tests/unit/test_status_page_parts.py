"""The status page's pure parts: session expiry and bounds, the sign-in form token, and how
heartbeat values are bounded before a template sees them."""

from __future__ import annotations

import time

import pytest

from webservice.ui import sessions
from webservice.ui.sessions import SessionStore
from webservice.ui.views import MAX_REPORT_CHARS, _containers, tail


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = time.time()
        monkeypatch.setattr(time, "time", lambda: self.now)


def test_a_session_ends_when_idle_and_after_its_absolute_lifetime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(monkeypatch)
    store = SessionStore()
    idle = store.create("alice")
    clock.now += sessions.IDLE_TTL_S + 1
    assert store.get(idle) is None

    busy, started = store.create("alice"), clock.now
    while store.get(busy) is not None:
        clock.now += sessions.IDLE_TTL_S // 2
    # Used all along, it lived until its absolute lifetime was over, and no longer.
    assert (
        sessions.ABSOLUTE_TTL_S
        < clock.now - started
        <= sessions.ABSOLUTE_TTL_S + sessions.IDLE_TTL_S
    )


def test_sessions_are_opaque_fresh_per_sign_in_bounded_and_ended_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 3)
    store = SessionStore()
    first, second = store.create("alice"), store.create("alice")
    assert first != second and "alice" not in first
    session = store.get(first)
    assert session is not None and session.identity == "alice" and session.csrf
    for _ in range(3):
        store.create("bob")
    assert store.get(first) is None  # the oldest went first
    store.end(second)
    assert store.get(second) is None
    assert store.get(None) is None and store.get("") is None and store.get("made-up") is None


def test_a_sign_in_form_token_works_once_only_with_its_own_cookie_and_while_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(monkeypatch)
    store = SessionStore()
    cookie, other = store.new_login(), store.new_login()
    assert not store.take_login(cookie, SessionStore.login_token(other))
    assert not store.take_login("", SessionStore.login_token(""))
    assert store.take_login(cookie, SessionStore.login_token(cookie))
    assert not store.take_login(cookie, SessionStore.login_token(cookie))
    clock.now += sessions.LOGIN_TTL_S + 1
    assert not store.take_login(other, SessionStore.login_token(other))


def test_reports_keep_their_end_and_heartbeat_values_are_bounded() -> None:
    report = "head\n" + "x" * (2 * MAX_REPORT_CHARS) + "\nValueError: the end"
    shown = tail(report)
    assert shown.endswith("ValueError: the end") and len(shown) < MAX_REPORT_CHARS + 100
    state = {
        "containers": {
            "container_routing": "y" * 10_000,
            "warm_pools": "not a number",
            "pools": [{"image": "i", "state": "ready", "inflight": True}] * 500 + ["junk"],
        }
    }
    containers = _containers(state)
    assert containers is not None
    assert len(containers.mode) <= 200 and containers.warm is None
    assert len(containers.pools) == 50 and containers.pools[0].inflight is None
    assert _containers({"containers": "junk"}) is None
