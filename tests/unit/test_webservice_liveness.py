"""When an endpoint is online."""

from __future__ import annotations

from typing import Any

from endpoint.protocol.messages import EPStatusReport
from webservice.liveness import heartbeat_from_report, is_online, status_doc

EP = "0022b3b7-2e2b-43c5-9a1d-ab22dcb28f83"


def _hb(state: dict[str, Any], at: float = 1000.0) -> Any:
    return heartbeat_from_report(EPStatusReport(endpoint_id=EP, global_state=state), at)


def test_online_within_three_periods_of_the_last_heartbeat() -> None:
    hb = _hb({"heartbeat_period": 10})
    assert is_online(hb, 1000 + 29, 30)
    assert not is_online(hb, 1000 + 31, 30)


def test_the_default_period_applies_when_the_heartbeat_states_none() -> None:
    hb = _hb({})
    assert is_online(hb, 1000 + 89, 30)
    assert not is_online(hb, 1000 + 91, 30)


def test_shutdown_inactive_and_error_heartbeats_are_offline() -> None:
    assert not is_online(_hb({"heartbeat_period": 0}), 1000, 30)
    assert not is_online(_hb({"heartbeat_period": 10, "active": False}), 1000, 30)
    assert not is_online(_hb({"heartbeat_period": 3, "error": "untrusted"}), 1000, 30)
    assert not is_online(None, 1000, 30)


def test_status_doc() -> None:
    assert status_doc(None, 0, 30)["status"] == "offline"
    doc = status_doc(_hb({"heartbeat_period": 10, "total_workers": 2}), 1001, 30)
    assert doc["status"] == "online"
    assert doc["details"]["total_workers"] == 2
    assert status_doc(_hb({"error": "boom"}), 1000, 30)["error"] == "boom"
