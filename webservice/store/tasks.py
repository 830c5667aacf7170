"""Task groups, tasks and their results, and the bench timings recorded on each task."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from webservice.db import Database, chunked, marks

#: A task the endpoint has not answered yet; the SDK treats anything but these two as pending.
WAITING = "waiting-for-ep"
SUCCESS = "success"
FAILED = "failed"
DONE = (SUCCESS, FAILED)
#: Literally the WHERE of the partial indexes in db.py, so SQLite can use them.
_NOT_DONE = "status NOT IN ('success', 'failed')"


@dataclass(frozen=True)
class TaskGroup:
    task_group_id: str
    owner: str
    queue_name: str | None


@dataclass(frozen=True)
class NewTask:
    task_id: str
    task_group_id: str
    function_id: str
    endpoint_id: str
    route_id: str
    owner: str
    submit_received_ns: int


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    task_group_id: str
    owner: str
    status: str
    result: str | None
    exception: str | None
    details: dict[str, Any] | None
    completion_t: float | None

    def to_api(self) -> dict[str, Any]:
        """The `GET /v2/tasks/{id}` shape the SDK's `_update_task_table` reads."""
        doc: dict[str, Any] = {"task_id": self.task_id, "status": self.status}
        if self.status not in DONE:
            doc["completion_t"] = None
            return doc
        # The SDK documents completion_t as a string of unix seconds.
        doc["completion_t"] = repr(self.completion_t)
        doc["details"] = self.details
        if self.exception is not None:
            doc["exception"] = self.exception
        else:
            doc["result"] = self.result
        return doc


@dataclass(frozen=True)
class Routing:
    """What the forwarder needs to know about a task a result arrived for."""

    task_id: str
    status: str
    queue_name: str | None
    published: bool
    #: The endpoint whose queue got the task: the only one whose result is accepted.
    route_id: str = ""


@dataclass(frozen=True)
class Completion:
    task_id: str
    failed: bool
    data: str
    details: dict[str, Any] | None
    completion_t: float


def _record(row: Any) -> TaskRecord:
    return TaskRecord(
        task_id=row["task_id"],
        task_group_id=row["task_group_id"],
        owner=row["owner"],
        status=row["status"],
        result=row["result"],
        exception=row["exception"],
        details=json.loads(row["details"]) if row["details"] else None,
        completion_t=row["completion_t"],
    )


class TaskStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- task groups ----------------------------------------------------------------------

    def get_group(self, task_group_id: str) -> TaskGroup | None:
        row = self._db.conn.execute(
            "SELECT * FROM task_groups WHERE task_group_id=?", (task_group_id,)
        ).fetchone()
        return TaskGroup(row["task_group_id"], row["owner"], row["queue_name"]) if row else None

    def create_group(self, task_group_id: str, owner: str, created: float) -> TaskGroup:
        with self._db.tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO task_groups (task_group_id, owner, created) VALUES (?,?,?)",
                (task_group_id, owner, created),
            )
        group = self.get_group(task_group_id)
        assert group is not None
        return group

    def set_group_queue(self, task_group_id: str, queue_name: str) -> None:
        with self._db.tx() as c:
            c.execute(
                "UPDATE task_groups SET queue_name=? WHERE task_group_id=?",
                (queue_name, task_group_id),
            )

    def discard_group_if_empty(self, task_group_id: str) -> None:
        """Forget a task group that has no task (its first submit failed)."""
        with self._db.tx() as c:
            c.execute(
                "DELETE FROM task_groups WHERE task_group_id=?"
                " AND NOT EXISTS (SELECT 1 FROM tasks WHERE task_group_id=?)",
                (task_group_id, task_group_id),
            )

    def group_task_ids(self, task_group_id: str) -> list[str]:
        rows = self._db.conn.execute(
            "SELECT task_id FROM tasks WHERE task_group_id=? ORDER BY rowid", (task_group_id,)
        ).fetchall()
        return [r["task_id"] for r in rows]

    # --- tasks ----------------------------------------------------------------------------

    def add(self, tasks: Sequence[NewTask]) -> None:
        with self._db.tx() as c:
            c.executemany(
                "INSERT INTO tasks (task_id, task_group_id, function_id, endpoint_id, route_id,"
                f" owner, status, submit_received_ns) VALUES (?,?,?,?,?,?,'{WAITING}',?)",
                [
                    (
                        t.task_id,
                        t.task_group_id,
                        t.function_id,
                        t.endpoint_id,
                        t.route_id,
                        t.owner,
                        t.submit_received_ns,
                    )
                    for t in tasks
                ],
            )

    def discard(self, task_ids: Sequence[str]) -> None:
        """Forget tasks that were never handed to the broker (their submit failed)."""
        with self._db.tx() as c:
            c.executemany("DELETE FROM tasks WHERE task_id=?", [(t,) for t in task_ids])

    def get(self, task_id: str) -> TaskRecord | None:
        row = self._db.conn.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone()
        return _record(row) if row else None

    def get_many(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        found: dict[str, TaskRecord] = {}
        for part in chunked(task_ids):
            rows = self._db.conn.execute(
                f"SELECT * FROM tasks WHERE task_id IN ({marks(len(part))})", part
            ).fetchall()
            found.update((r["task_id"], _record(r)) for r in rows)
        return found

    def pending_ids(
        self, *, route_id: str | None = None, endpoint_id: str | None = None
    ) -> list[str]:
        column, value = ("route_id", route_id) if route_id else ("endpoint_id", endpoint_id)
        rows = self._db.conn.execute(
            f"SELECT task_id FROM tasks WHERE {column}=? AND {_NOT_DONE}", (value,)
        ).fetchall()
        return [r["task_id"] for r in rows]

    # --- results --------------------------------------------------------------------------

    def routing(self, task_ids: Sequence[str]) -> dict[str, Routing]:
        found: dict[str, Routing] = {}
        for part in chunked(task_ids):
            rows = self._db.conn.execute(
                "SELECT t.task_id, t.status, t.result_published_ns, t.route_id, g.queue_name"
                " FROM tasks t"
                " LEFT JOIN task_groups g ON g.task_group_id = t.task_group_id"
                f" WHERE t.task_id IN ({marks(len(part))})",
                part,
            ).fetchall()
            for r in rows:
                found[r["task_id"]] = Routing(
                    r["task_id"],
                    r["status"],
                    r["queue_name"],
                    r["result_published_ns"] is not None,
                    r["route_id"],
                )
        return found

    def complete(self, completions: Iterable[Completion]) -> None:
        """Store results; a task that already has one keeps it (a result is stored once)."""
        rows = [
            (
                FAILED if c.failed else SUCCESS,
                None if c.failed else c.data,
                c.data if c.failed else None,
                json.dumps(c.details) if c.details is not None else None,
                c.completion_t,
                c.task_id,
            )
            for c in completions
        ]
        with self._db.tx() as c:
            c.executemany(
                "UPDATE tasks SET status=?, result=?, exception=?, details=?, completion_t=?"
                f" WHERE task_id=? AND {_NOT_DONE}",
                rows,
            )

    def mark_published(self, published: Iterable[tuple[str, int]]) -> None:
        with self._db.tx() as c:
            c.executemany(
                "UPDATE tasks SET result_published_ns=? WHERE task_id=?",
                [(ns, tid) for tid, ns in published],
            )

    def timings(self, task_group_id: str) -> dict[str, dict[str, int | None]]:
        rows = self._db.conn.execute(
            "SELECT task_id, submit_received_ns, result_published_ns FROM tasks"
            " WHERE task_group_id=?",
            (task_group_id,),
        ).fetchall()
        return {
            r["task_id"]: {
                "submit_received_ns": r["submit_received_ns"],
                "result_published_ns": r["result_published_ns"],
            }
            for r in rows
        }
