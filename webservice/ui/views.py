"""What the status page shows one identity, read from what the service already stores.

Every query here is scoped by that identity: endpoints it owns, user endpoints started for it,
tasks it submitted. Nothing else is ever read, so no other identity's endpoint or task can
reach a page. Heartbeat fields come from the endpoints themselves: each is coerced to the type
shown and bounded in size (the template escapes them all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from webservice.liveness import is_online
from webservice.store import Store
from webservice.store.endpoints import Endpoint
from webservice.store.tasks import FAILED

#: Recent tasks on the overview and on an endpoint's page.
RECENT_TASKS = 50
#: Characters of a traceback or block-failure report shown (the end: the error is last).
MAX_REPORT_CHARS = 16_000
#: Characters of any other heartbeat value shown.
MAX_VALUE_CHARS = 200
#: Container pools and block states listed per endpoint.
MAX_ROWS = 50


def tail(text: str, limit: int = MAX_REPORT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters before these ...]\n" + text[-limit:]


def _report(value: Any) -> str:
    """A long text (a traceback, a failure report): its end, bounded."""
    return tail(value if isinstance(value, str) else json.dumps(value, default=str))


def _text(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


@dataclass(frozen=True)
class Breaker:
    """The endpoint's circuit breaker (`engine_breaker`): why no new batch jobs start."""

    kind: str
    trips: int | None
    retry_after: float | None
    report: str


@dataclass(frozen=True)
class Pool:
    image: str
    state: str
    inflight: int | None
    served: int | None


@dataclass(frozen=True)
class Containers:
    mode: str
    warm: int | None
    starting: int | None
    waiting_tasks: int | None
    pools: list[Pool]


@dataclass(frozen=True)
class EndpointView:
    endpoint_id: str
    name: str
    kind: str  # "single-user", "core" or "user endpoint"
    online: bool
    last_heartbeat: float | None
    heartbeat_period: float | None
    engine: str
    workers: int | None = None
    idle_workers: int | None = None
    pending_tasks: int | None = None
    running_tasks: int | None = None
    blocks: list[tuple[str, int]] = field(default_factory=list)
    block_limits: str = ""
    containers: Containers | None = None
    breaker: Breaker | None = None
    start_error: str | None = None
    #: A core endpoint: how many user endpoints it runs (anyone's), and this identity's.
    user_endpoint_count: int | None = None
    user_endpoints: list[EndpointView] = field(default_factory=list)
    manager_id: str | None = None

    @property
    def state(self) -> str:
        return "online" if self.online else "offline"


@dataclass(frozen=True)
class TaskView:
    task_id: str
    function_id: str
    endpoint_id: str
    route_id: str
    status: str
    submitted: float
    completed: float | None
    traceback: str | None

    @property
    def run_s(self) -> float | None:
        """Seconds from the service receiving the submit to it storing the result."""
        return None if self.completed is None else max(0.0, self.completed - self.submitted)


def _breaker(state: dict[str, Any]) -> Breaker | None:
    doc = state.get("engine_breaker")
    if not isinstance(doc, dict) or doc.get("state") != "open":
        return None
    retry = doc.get("retry_after_unix")
    return Breaker(
        kind=_text(doc.get("kind", "engine")),
        trips=_int(doc.get("trips")),
        retry_after=float(retry) if isinstance(retry, int | float) else None,
        report=_report(doc.get("reason", "")),
    )


def _containers(state: dict[str, Any]) -> Containers | None:
    doc = state.get("containers")
    if not isinstance(doc, dict):
        return None
    pools = [p for p in doc.get("pools") or [] if isinstance(p, dict)][:MAX_ROWS]
    return Containers(
        mode=_text(doc.get("container_routing", "")),
        warm=_int(doc.get("warm_pools")),
        starting=_int(doc.get("starting_pools")),
        waiting_tasks=_int(doc.get("waiting_tasks")),
        pools=[
            Pool(
                _text(p.get("image", "")),
                _text(p.get("state", "")),
                _int(p.get("inflight")),
                _int(p.get("served")),
            )
            for p in pools
        ],
    )


def _blocks(state: dict[str, Any]) -> list[tuple[str, int]]:
    doc = state.get("blocks")
    if not isinstance(doc, dict):
        return []
    rows = [(_text(k), _int(v)) for k, v in list(doc.items())[:MAX_ROWS]]
    return [(k, v) for k, v in rows if v is not None]


def _block_limits(state: dict[str, Any]) -> str:
    low, high = _int(state.get("min_blocks")), _int(state.get("max_blocks"))
    provider = state.get("provider_type")
    if low is None and high is None:
        return ""
    text = f"{low if low is not None else '?'}..{high if high is not None else '?'}"
    return f"{text} ({_text(provider)})" if provider else text


class StatusViews:
    """The page's read-only queries for one signed-in identity."""

    def __init__(self, store: Store, identity: str, now: float, default_period_s: float):
        self._store = store
        self._identity = identity
        self._now = now
        self._default_period_s = default_period_s

    # ---- endpoints ---------------------------------------------------------------------
    def endpoints(self) -> list[EndpointView]:
        owned = self._store.endpoints.visible_to(self._identity, include_public=False)
        return [self._endpoint(ep) for ep in owned]

    def elsewhere(self) -> list[EndpointView]:
        """User endpoints started for this identity on core endpoints it does not own."""
        rows = self._store.db.conn.execute(
            "SELECT uep_id, manager_id, name FROM user_endpoints WHERE owner=? AND manager_id"
            " NOT IN (SELECT endpoint_id FROM endpoints WHERE owner=?) ORDER BY created",
            (self._identity, self._identity),
        ).fetchall()
        return [self._uep(r) for r in rows[:MAX_ROWS]]

    def endpoint(self, endpoint_id: str) -> EndpointView | None:
        """One endpoint's view, None unless this identity owns it or it is a user
        endpoint started for this identity: the caller answers 404 either way."""
        ep = self._store.endpoints.get(endpoint_id)
        if ep is not None:
            return self._endpoint(ep) if ep.owner == self._identity else None
        row = self._store.db.conn.execute(
            "SELECT uep_id, manager_id, name FROM user_endpoints WHERE uep_id=? AND owner=?",
            (endpoint_id, self._identity),
        ).fetchone()
        return self._uep(row) if row else None

    def _endpoint(self, ep: Endpoint) -> EndpointView:
        kind = "core" if ep.is_manager else "single-user"
        view = self._view(ep.endpoint_id, ep.display_name or ep.name, kind)
        if not ep.is_manager:
            return view
        rows = self._store.db.conn.execute(
            "SELECT uep_id, manager_id, name FROM user_endpoints WHERE manager_id=? AND owner=?"
            " ORDER BY created",
            (ep.endpoint_id, self._identity),
        ).fetchall()
        hb = self._store.heartbeats.get(ep.endpoint_id)
        count = _int(hb.global_state.get("user_endpoints")) if hb else None
        ueps = [self._uep(r) for r in rows[:MAX_ROWS]]
        return replace(view, user_endpoint_count=count, user_endpoints=ueps)

    def _uep(self, row: Any) -> EndpointView:
        view = self._view(str(row["uep_id"]), str(row["name"]), "user endpoint")
        return replace(view, manager_id=str(row["manager_id"]))

    def _view(self, endpoint_id: str, name: str, kind: str) -> EndpointView:
        hb = self._store.heartbeats.get(endpoint_id)
        online = is_online(hb, self._now, self._default_period_s)
        if hb is None:
            return EndpointView(endpoint_id, name, kind, online, None, None, "")
        state = hb.global_state
        error = state.get("error")
        return EndpointView(
            endpoint_id=endpoint_id,
            name=name,
            kind=kind,
            online=online,
            last_heartbeat=hb.received_at,
            heartbeat_period=hb.period,
            engine=_text(state.get("engine_type", "")),
            workers=_int(state.get("total_workers")),
            idle_workers=_int(state.get("idle_workers")),
            pending_tasks=_int(state.get("pending_tasks", state.get("queued_tasks"))),
            running_tasks=_int(state.get("running_tasks")),
            blocks=_blocks(state),
            block_limits=_block_limits(state),
            containers=_containers(state),
            breaker=_breaker(state),
            start_error=_report(error) if error is not None else None,
        )

    # ---- tasks -------------------------------------------------------------------------
    def tasks(self, endpoint_id: str | None = None) -> list[TaskView]:
        """This identity's most recent tasks (on one endpoint or user endpoint, or all)."""
        sql = (
            "SELECT task_id, function_id, endpoint_id, route_id, status, exception,"
            " completion_t, submit_received_ns FROM tasks WHERE owner=?"
        )
        args: tuple[Any, ...] = (self._identity,)
        if endpoint_id is not None:
            sql += " AND (endpoint_id=? OR route_id=?)"
            args += (endpoint_id, endpoint_id)
        rows = self._store.db.conn.execute(
            sql + " ORDER BY rowid DESC LIMIT ?", (*args, RECENT_TASKS)
        ).fetchall()
        return [_task(r) for r in rows]


def _task(row: Any) -> TaskView:
    failed = row["status"] == FAILED and row["exception"] is not None
    return TaskView(
        task_id=row["task_id"],
        function_id=row["function_id"],
        endpoint_id=row["endpoint_id"],
        route_id=row["route_id"],
        status=row["status"],
        submitted=row["submit_received_ns"] / 1e9,
        completed=row["completion_t"],
        traceback=tail(row["exception"]) if failed else None,
    )
