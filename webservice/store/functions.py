"""Registered functions: who owns them and the framed code that prefixes every task buffer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from webservice.db import Database


@dataclass(frozen=True)
class Function:
    function_id: str
    owner: str
    name: str
    code: str
    description: str | None
    meta: dict[str, Any]
    public: bool
    group_id: str | None

    def visible_to(self, identity: str) -> bool:
        return self.public or self.owner == identity

    def to_api(self) -> dict[str, Any]:
        return {
            "function_uuid": self.function_id,
            "function_name": self.name,
            "function_code": self.code,
            "description": self.description,
            "metadata": self.meta,
            "public": self.public,
            "group": self.group_id,
        }


def _row(row: Any) -> Function:
    return Function(
        function_id=row["function_id"],
        owner=row["owner"],
        name=row["name"],
        code=row["code"],
        description=row["description"],
        meta=json.loads(row["meta"]),
        public=bool(row["public"]),
        group_id=row["group_id"],
    )


class FunctionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, fn: Function) -> None:
        with self._db.tx() as c:
            c.execute(
                "INSERT INTO functions (function_id, owner, name, code, description, meta,"
                " public, group_id, created) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    fn.function_id,
                    fn.owner,
                    fn.name,
                    fn.code,
                    fn.description,
                    json.dumps(fn.meta),
                    int(fn.public),
                    fn.group_id,
                    time.time(),
                ),
            )

    def get(self, function_id: str) -> Function | None:
        row = self._db.conn.execute(
            "SELECT * FROM functions WHERE function_id=?", (function_id,)
        ).fetchone()
        return _row(row) if row else None

    def get_many(self, function_ids: Iterable[str]) -> dict[str, Function]:
        ids = list(function_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._db.conn.execute(
            f"SELECT * FROM functions WHERE function_id IN ({marks})", ids
        ).fetchall()
        return {r["function_id"]: _row(r) for r in rows}

    def delete(self, function_id: str) -> None:
        with self._db.tx() as c:
            c.execute("DELETE FROM functions WHERE function_id=?", (function_id,))
