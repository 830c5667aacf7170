"""The endpoint's durable journal of tasks and results (SQLite, WAL).

Promise: a delivery is written here before it is acked, and a result is written here before it
is published; a row leaves only when the broker has confirmed its result. After a crash the
journal says which results to re-send, which tasks never started and which were running.

WAL with synchronous=NORMAL survives a process crash (kill -9) without an fsync per commit;
only an OS crash can lose the last commits, and those deliveries were not acked yet or their
results not confirmed, so the broker still holds them.

Task bodies over SPILL_BYTES live in private files beside the database (`journal.db-bodies/`),
written before the transaction that records their row commits and removed after the one that
records their result: through SQLite, WAL would write each large body twice (the log, then the
checkpoint), which made 10 MB arguments slower through ours than through the official endpoint.
A page-cache write survives a process crash as the WAL does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from endpoint.errors import JournalError
from endpoint.host.files import open_private, refuse_symlink

#: Bodies larger than this are kept in files of their own, not in SQLite.
SPILL_BYTES = 256 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    function_id TEXT NOT NULL,
    body BLOB NOT NULL,
    result_serializers TEXT NOT NULL,
    resource_spec TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    result BLOB
);
"""


@dataclass
class JournaledTask:
    task_id: str
    function_id: str
    body: bytes
    result_serializers: list[str]
    resource_spec: str | None
    attempts: int = 0
    result: bytes | None = None


class Spill:
    """Large task bodies, one private file each (named by a hash of the task id, so no id can
    name a path), in a private directory beside the journal."""

    def __init__(self, journal_path: str) -> None:
        self.dir = Path(f"{journal_path}-bodies")
        #: ids whose body is in a file now (removed with their row's result)
        self.ids: set[str] = set()

    def open(self) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.dir, 0o700)
        st = os.lstat(self.dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{self.dir} is not a directory of this user")
        os.chmod(self.dir, 0o700)
        self.ids = set()

    def _file(self, task_id: str) -> Path:
        return self.dir / hashlib.sha256(task_id.encode()).hexdigest()[:40]

    def write(self, task_id: str, body: bytes) -> None:
        fd = open_private(self._file(task_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        self.ids.add(task_id)

    def read(self, task_id: str) -> bytes:
        """The body, or b"" when its file is gone (an OS crash): the task then fails to
        unpack and gets an error result, never a hang."""
        try:
            fd = open_private(self._file(task_id), os.O_RDONLY)
        except FileNotFoundError:
            return b""
        with os.fdopen(fd, "rb") as f:
            body = f.read()
        self.ids.add(task_id)
        return body

    def remove(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            if task_id in self.ids:
                self.ids.discard(task_id)
                self._file(task_id).unlink(missing_ok=True)


class Journal:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.spill = Spill(self.path)
        try:
            # SQLite opens its files by name and would follow a planted symlink.
            for name in (self.path, f"{self.path}-wal", f"{self.path}-shm"):
                refuse_symlink(name)
            os.close(open_private(self.path, os.O_RDWR | os.O_CREAT))
            self.spill.open()
        except OSError as e:
            raise JournalError(f"cannot open journal {self.path}: {e}") from e
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise JournalError(f"cannot open journal {self.path}: {e}") from e

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """One transaction for everything one interchange step decided."""
        batch = Batch(self._db, self.spill)
        try:
            self._db.execute("BEGIN")
            yield batch
            self._db.execute("COMMIT")
        except (sqlite3.Error, OSError) as e:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise JournalError(f"journal write failed: {e}") from e
        # Only once the results are committed may their tasks' bodies go.
        self.spill.remove(batch.done)

    def load(self) -> list[JournaledTask]:
        """Everything not yet confirmed, oldest first (used once, at start)."""
        rows = self._db.execute(
            "SELECT task_id, function_id, body, result_serializers, resource_spec, attempts,"
            " result FROM tasks ORDER BY rowid"
        ).fetchall()
        return [
            JournaledTask(
                r[0],
                r[1],
                self.spill.read(r[0]) if not r[2] and r[6] is None else bytes(r[2]),
                json.loads(r[3]),
                r[4],
                r[5],
                None if r[6] is None else bytes(r[6]),
            )
            for r in rows
        ]

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM tasks").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class Batch:
    """Writes inside one journal transaction."""

    def __init__(self, db: sqlite3.Connection, spill: Spill | None = None) -> None:
        self._db = db
        self._spill = spill
        #: tasks whose result this transaction records: their spilled bodies go after it
        self.done: list[str] = []

    def _body(self, t: JournaledTask) -> bytes:
        if self._spill is None or len(t.body) <= SPILL_BYTES:
            return t.body
        self._spill.write(t.task_id, t.body)
        return b""

    def add_tasks(self, tasks: Iterable[JournaledTask], started: set[str]) -> None:
        """Insert new tasks; those in `started` go to the engine in this same step.

        The result starts empty (set_results records it), and the attempt count is written
        here for tasks started at once, so the hot path costs one statement per task.
        """
        self._db.executemany(
            "INSERT OR IGNORE INTO tasks (task_id, function_id, body, result_serializers,"
            " resource_spec, attempts) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    t.task_id,
                    t.function_id,
                    self._body(t),
                    json.dumps(t.result_serializers),
                    t.resource_spec,
                    1 if t.task_id in started else 0,
                )
                for t in tasks
            ],
        )

    def mark_started(self, task_ids: Iterable[str]) -> None:
        self._db.executemany(
            "UPDATE tasks SET attempts = attempts + 1 WHERE task_id = ?",
            [(t,) for t in task_ids],
        )

    def set_results(self, results: Iterable[tuple[str, bytes]]) -> None:
        """Record results; a task's body goes at the same time (recovery re-sends a result
        and never runs its task again). SQLite rewrites a whole row on UPDATE, so keeping the
        body would copy a 10 MB argument once more for every result."""
        rows = [(r, t) for t, r in results]
        self._db.executemany("UPDATE tasks SET result = ?, body = x'' WHERE task_id = ?", rows)
        self.done += [t for _, t in rows]

    def forget(self, task_ids: Iterable[str]) -> None:
        rows = [(t,) for t in task_ids]
        self._db.executemany("DELETE FROM tasks WHERE task_id = ?", rows)
        self.done += [t for (t,) in rows]
