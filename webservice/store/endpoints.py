"""Registered endpoints and the user endpoints (UEPs) the service started on managers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from webservice.db import Database

SINGLE_USER = "single_user"
MANAGER = "manager"


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    owner: str
    name: str
    display_name: str | None
    mode: str
    public: bool
    allowed_functions: list[str] = field(default_factory=list)
    registration: dict[str, Any] = field(default_factory=dict)
    locked_until: float = 0.0

    @property
    def is_manager(self) -> bool:
        return self.mode == MANAGER

    def locked(self, now: float | None = None) -> bool:
        return self.locked_until > (time.time() if now is None else now)

    def summary(self) -> dict[str, Any]:
        return {
            "uuid": self.endpoint_id,
            "name": self.name,
            "display_name": self.display_name or self.name,
            "owner": self.owner,
            "public": self.public,
            "multi_user": self.is_manager,
            "endpoint_mode": self.mode,
        }


@dataclass(frozen=True)
class UserEndpoint:
    """A user endpoint a manager runs for one (identity, user_endpoint_config)."""

    uep_id: str
    manager_id: str
    owner: str
    name: str
    user_opts: dict[str, Any]
    user_runtime: dict[str, Any]


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        endpoint_id=row["endpoint_id"],
        owner=row["owner"],
        name=row["name"],
        display_name=row["display_name"],
        mode=row["mode"],
        public=bool(row["public"]),
        allowed_functions=json.loads(row["allowed_functions"]),
        registration=json.loads(row["registration"]),
        locked_until=row["locked_until"],
    )


def _uep(row: Any) -> UserEndpoint:
    return UserEndpoint(
        uep_id=row["uep_id"],
        manager_id=row["manager_id"],
        owner=row["owner"],
        name=row["name"],
        user_opts=json.loads(row["user_opts"]),
        user_runtime=json.loads(row["user_runtime"]),
    )


class EndpointStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, endpoint_id: str) -> Endpoint | None:
        row = self._db.conn.execute(
            "SELECT * FROM endpoints WHERE endpoint_id=?", (endpoint_id,)
        ).fetchone()
        return _endpoint(row) if row else None

    def save(self, ep: Endpoint) -> None:
        """Create or replace the registration; a lock survives re-registration attempts."""
        now = time.time()
        with self._db.tx() as c:
            c.execute(
                "INSERT INTO endpoints (endpoint_id, owner, name, display_name, mode, public,"
                " allowed_functions, registration, created, updated)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (endpoint_id) DO UPDATE SET name=excluded.name,"
                " display_name=excluded.display_name, mode=excluded.mode,"
                " public=excluded.public, allowed_functions=excluded.allowed_functions,"
                " registration=excluded.registration, updated=excluded.updated",
                (
                    ep.endpoint_id,
                    ep.owner,
                    ep.name,
                    ep.display_name,
                    ep.mode,
                    int(ep.public),
                    json.dumps(ep.allowed_functions),
                    json.dumps(ep.registration),
                    now,
                    now,
                ),
            )

    def lock(self, endpoint_id: str, until: float) -> None:
        with self._db.tx() as c:
            c.execute(
                "UPDATE endpoints SET locked_until=? WHERE endpoint_id=?", (until, endpoint_id)
            )

    def delete(self, endpoint_id: str) -> None:
        """Forget the endpoint, keeping a tombstone: only its owner may reuse the id."""
        with self._db.tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO deleted_endpoints (endpoint_id, owner, deleted_at)"
                " SELECT endpoint_id, owner, ? FROM endpoints WHERE endpoint_id=?",
                (time.time(), endpoint_id),
            )
            c.execute("DELETE FROM endpoints WHERE endpoint_id=?", (endpoint_id,))

    def deleted_owner(self, endpoint_id: str) -> str | None:
        """Who owned `endpoint_id` when it was deleted (None: never deleted)."""
        row = self._db.conn.execute(
            "SELECT owner FROM deleted_endpoints WHERE endpoint_id=?", (endpoint_id,)
        ).fetchone()
        return None if row is None else str(row["owner"])

    def with_policy(self, policy_id: str) -> list[str]:
        """The endpoints whose registration names `policy_id` as authentication_policy."""
        rows = self._db.conn.execute(
            "SELECT endpoint_id FROM endpoints"
            " WHERE json_extract(registration, '$.authentication_policy') = ?",
            (policy_id,),
        ).fetchall()
        return [str(r["endpoint_id"]) for r in rows]

    def uep_ids(self, manager_id: str) -> list[str]:
        rows = self._db.conn.execute(
            "SELECT uep_id FROM user_endpoints WHERE manager_id=?", (manager_id,)
        ).fetchall()
        return [str(r["uep_id"]) for r in rows]

    def visible_to(self, identity: str, include_public: bool) -> list[Endpoint]:
        sql = "SELECT * FROM endpoints WHERE owner=?"
        if include_public:
            sql += " OR public=1"
        rows = self._db.conn.execute(sql + " ORDER BY created", (identity,)).fetchall()
        return [_endpoint(r) for r in rows]

    # --- user endpoints -------------------------------------------------------------------

    def save_uep(self, uep: UserEndpoint) -> None:
        now = time.time()
        with self._db.tx() as c:
            c.execute(
                "INSERT INTO user_endpoints (uep_id, manager_id, owner, name, user_opts,"
                " user_runtime, created, updated) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT (uep_id) DO UPDATE SET user_runtime=excluded.user_runtime,"
                " updated=excluded.updated",
                (
                    uep.uep_id,
                    uep.manager_id,
                    uep.owner,
                    uep.name,
                    json.dumps(uep.user_opts),
                    json.dumps(uep.user_runtime),
                    now,
                    now,
                ),
            )

    def get_uep(self, uep_id: str) -> UserEndpoint | None:
        row = self._db.conn.execute(
            "SELECT * FROM user_endpoints WHERE uep_id=?", (uep_id,)
        ).fetchone()
        return _uep(row) if row else None

    def ueps_with_pending_tasks(self, manager_id: str) -> list[UserEndpoint]:
        rows = self._db.conn.execute(
            "SELECT * FROM user_endpoints u WHERE u.manager_id=? AND EXISTS"
            " (SELECT 1 FROM tasks t WHERE t.route_id=u.uep_id"
            "  AND t.status NOT IN ('success', 'failed'))",
            (manager_id,),
        ).fetchall()
        return [_uep(r) for r in rows]
