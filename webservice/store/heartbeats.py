"""The last heartbeat of each endpoint (manager, user endpoint or single-user endpoint)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from webservice.db import Database


@dataclass(frozen=True)
class Heartbeat:
    endpoint_id: str
    received_at: float
    period: float | None
    active: bool
    global_state: dict[str, Any]


class HeartbeatStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, hb: Heartbeat) -> None:
        with self._db.tx() as c:
            c.execute(
                "INSERT INTO heartbeats (endpoint_id, received_at, period, active, global_state)"
                " VALUES (?,?,?,?,?) ON CONFLICT (endpoint_id) DO UPDATE SET"
                " received_at=excluded.received_at, period=excluded.period,"
                " active=excluded.active, global_state=excluded.global_state",
                (
                    hb.endpoint_id,
                    hb.received_at,
                    hb.period,
                    int(hb.active),
                    json.dumps(hb.global_state),
                ),
            )

    def get(self, endpoint_id: str) -> Heartbeat | None:
        row = self._db.conn.execute(
            "SELECT * FROM heartbeats WHERE endpoint_id=?", (endpoint_id,)
        ).fetchone()
        if row is None:
            return None
        return Heartbeat(
            row["endpoint_id"],
            row["received_at"],
            row["period"],
            bool(row["active"]),
            json.loads(row["global_state"]),
        )
