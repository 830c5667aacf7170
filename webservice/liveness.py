"""When an endpoint counts as online: a pure policy over its last heartbeat."""

from __future__ import annotations

from typing import Any

from endpoint.protocol.messages import EPStatusReport
from webservice.store.heartbeats import Heartbeat

#: An endpoint is online while its last heartbeat is younger than this many periods.
MISSED_PERIODS = 3


def heartbeat_from_report(report: EPStatusReport, received_at: float) -> Heartbeat:
    state = report.global_state
    period = state.get("heartbeat_period")
    period_s = float(period) if isinstance(period, int | float) else None
    # `active: false` is a user endpoint's last word; `error` a start that failed.
    active = state.get("active") is not False and "error" not in state
    return Heartbeat(report.endpoint_id, received_at, period_s, active, state)


def is_online(hb: Heartbeat | None, now: float, default_period_s: float) -> bool:
    if hb is None or not hb.active:
        return False
    if hb.period == 0:
        # A core endpoint's final heartbeat says `heartbeat_period: 0`: shutting down now.
        return False
    period = hb.period if hb.period is not None else default_period_s
    return now - hb.received_at <= MISSED_PERIODS * period


def status_doc(hb: Heartbeat | None, now: float, default_period_s: float) -> dict[str, Any]:
    """The `GET /v2/endpoints/{id}/status` body; the endpoint CLI reads only `status`."""
    online = is_online(hb, now, default_period_s)
    doc: dict[str, Any] = {"status": "online" if online else "offline"}
    if hb is None:
        doc.update(last_heartbeat=None, heartbeat_period=None, details={})
        return doc
    doc.update(
        last_heartbeat=hb.received_at,
        heartbeat_period=hb.period,
        details=hb.global_state,
    )
    if "error" in hb.global_state:
        doc["error"] = hb.global_state["error"]
    return doc
