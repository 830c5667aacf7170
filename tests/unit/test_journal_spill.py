"""Large task bodies live in private files beside the journal, not in SQLite (whose WAL would
write each twice), with the journal's promises: written before their row commits, read back
after a crash, removed only once their result is committed."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from endpoint.errors import JournalError
from endpoint.runtime.journal import SPILL_BYTES, Journal, JournaledTask

BIG = os.urandom(SPILL_BYTES + 1)
SMALL = b"small body"


def task(task_id: str, body: bytes) -> JournaledTask:
    return JournaledTask(task_id, "fn", body, ["json"], None)


def sqlite_bodies(path: Path) -> dict[str, bytes]:
    db = sqlite3.connect(path)
    try:
        return {r[0]: bytes(r[1]) for r in db.execute("SELECT task_id, body FROM tasks")}
    finally:
        db.close()


def spilled(path: Path) -> list[Path]:
    return sorted(Path(f"{path}-bodies").iterdir())


def test_a_large_body_is_a_private_file_and_survives_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal(path)
    with journal.batch() as b:
        b.add_tasks([task("big", BIG), task("small", SMALL)], started={"big"})
    assert sqlite_bodies(path) == {"big": b"", "small": SMALL}
    (file,) = spilled(path)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    # A crash: nothing closed, a new process opens the same journal.
    again = Journal(path)
    bodies = {t.task_id: t.body for t in again.load()}
    assert bodies == {"big": BIG, "small": SMALL}


def test_the_file_goes_only_once_the_result_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal(path)
    with journal.batch() as b:
        b.add_tasks([task("big", BIG)], started={"big"})
    with pytest.raises(JournalError), journal.batch() as b:
        b.set_results([("big", b"result")])
        raise sqlite3.OperationalError("disk I/O error")  # the transaction rolls back
    assert len(spilled(path)) == 1
    assert [t.body for t in Journal(path).load()] == [BIG]
    with journal.batch() as b:
        b.set_results([("big", b"result")])
    assert spilled(path) == []
    (loaded,) = Journal(path).load()
    assert loaded.result == b"result"
    with journal.batch() as b:
        b.forget(["big"])
    assert journal.count() == 0


def test_a_body_file_lost_with_the_os_reads_as_empty_instead_of_failing_the_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    with Journal(path).batch() as b:
        b.add_tasks([task("big", BIG)], started=set())
    for file in spilled(path):
        file.unlink()
    assert [t.body for t in Journal(path).load()] == [b""]


def test_a_planted_symlink_for_the_bodies_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Path(f"{tmp_path / 'journal.db'}-bodies").symlink_to(elsewhere)
    with pytest.raises(JournalError, match="bodies"):
        Journal(tmp_path / "journal.db")
