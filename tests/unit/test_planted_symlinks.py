"""Issue 13 (finding 9): the files the endpoint creates never follow a planted symlink.

Where another user can write into an endpoint's directory (a shared volume, a group-writable
state directory), a symlink named like one of our files must not make the endpoint append to,
truncate or chmod its target. Each test plants one, as that user would, pointing at a file of
"theirs", runs the code that creates our file, and checks the target is untouched.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from endpoint.admin import boot, service
from endpoint.cli.app import main
from endpoint.errors import AuthError, JournalError
from endpoint.host import files, logs
from endpoint.host.dirs import write_endpoint_id
from endpoint.host.pidlock import PID_FILE, PidLock
from endpoint.host.status import read_status, write_status
from endpoint.manager.audit import AuditLog
from endpoint.runtime.journal import Journal

PRECIOUS = "someone else's file\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "theirs" / "precious"
    path.parent.mkdir()
    path.write_text(PRECIOUS)
    path.chmod(0o644)
    return path


@pytest.fixture
def ep_dir(tmp_path: Path) -> Path:
    path = tmp_path / "ep"
    path.mkdir()
    path.chmod(0o777)  # as a shared directory others can write into
    return path


def plant(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def untouched(victim: Path) -> bool:
    st = victim.stat()
    return victim.read_text() == PRECIOUS and (st.st_mode & 0o777) == 0o644


def test_status_json_replaces_a_planted_link_instead_of_writing_through_it(
    ep_dir: Path, victim: Path
) -> None:
    plant(ep_dir / "status.json", victim)
    plant(ep_dir / f".status.json.{os.getpid()}.tmp", victim)
    write_status(ep_dir, {"state": "running"})
    assert untouched(victim)
    assert not (ep_dir / "status.json").is_symlink()
    assert read_status(ep_dir) == {"state": "running"}


def test_endpoint_json_replaces_a_planted_link(ep_dir: Path, victim: Path) -> None:
    plant(ep_dir / "endpoint.json", victim)
    plant(ep_dir / "endpoint.tmp", victim)  # the temporary name earlier versions used
    plant(ep_dir / f".endpoint.json.{os.getpid()}.tmp", victim)
    write_endpoint_id(ep_dir, "11111111-2222-3333-4444-555555555555")
    assert untouched(victim)
    assert "11111111" in (ep_dir / "endpoint.json").read_text()


def test_the_log_file_refuses_a_planted_link(ep_dir: Path, victim: Path) -> None:
    plant(ep_dir / "endpoint.log", victim)
    with pytest.raises(OSError, match="symbolic link"):
        logs.file_handler(ep_dir / "endpoint.log")
    with pytest.raises(OSError, match="symbolic link"):
        files.open_log(ep_dir / "endpoint.log")
    assert untouched(victim)


def test_a_log_file_rotated_into_a_planted_link_does_not_follow_it(
    ep_dir: Path, victim: Path
) -> None:
    handler = logs.file_handler(ep_dir / "endpoint.log")
    try:
        (ep_dir / "endpoint.log").unlink()  # someone swaps the file for a link
        plant(ep_dir / "endpoint.log", victim)
        assert isinstance(handler, logging.handlers.RotatingFileHandler)
        handler.doRollover()  # renames the link itself away, then opens a new file
        handler.emit(logging.makeLogRecord({"msg": "after the rollover"}))
        assert not (ep_dir / "endpoint.log").is_symlink()
        (ep_dir / "endpoint.log").unlink()
        plant(ep_dir / "endpoint.log", victim)
        with pytest.raises(OSError, match="symbolic link"):
            handler._open()  # what every (re)open by name runs
    finally:
        handler.close()
    assert untouched(victim)


def test_a_log_under_dev_may_be_a_link(tmp_path: Path) -> None:
    fd = files.open_log("/dev/stdout" if os.path.exists("/dev/stdout") else "/dev/null")
    os.close(fd)


def test_a_planted_fifo_is_refused_without_hanging(ep_dir: Path) -> None:
    os.mkfifo(ep_dir / "endpoint.log")
    with pytest.raises(OSError, match="not a regular file"):
        files.open_log(ep_dir / "endpoint.log")


def test_the_pid_file_refuses_a_planted_link(ep_dir: Path, victim: Path) -> None:
    plant(ep_dir / PID_FILE, victim)
    with pytest.raises(OSError, match="symbolic link"):
        PidLock.acquire(ep_dir)
    assert untouched(victim)


@pytest.mark.parametrize("name", ["journal.db", "journal.db-wal", "journal.db-shm"])
def test_the_journal_refuses_a_planted_link(ep_dir: Path, victim: Path, name: str) -> None:
    plant(ep_dir / name, victim)
    with pytest.raises(JournalError, match="symbolic link"):
        Journal(ep_dir / "journal.db")
    assert untouched(victim)


def test_the_audit_log_refuses_a_planted_link(ep_dir: Path, victim: Path) -> None:
    plant(ep_dir / "audit.log", victim)
    with pytest.raises(OSError, match="symbolic link"):
        AuditLog(ep_dir / "audit.log")
    assert untouched(victim)


def test_the_boot_secret_file_replaces_a_planted_link(
    ep_dir: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", "s3cret")
    plant(ep_dir / boot.BOOT_ENV_FILE, victim)
    boot._write_env_file(ep_dir)
    assert untouched(victim)
    assert (ep_dir / boot.BOOT_ENV_FILE).read_text() == "GLOBUS_COMPUTE_CLIENT_SECRET=s3cret\n"
    assert ((ep_dir / boot.BOOT_ENV_FILE).stat().st_mode & 0o777) == 0o600


def test_configure_refuses_an_endpoint_dir_that_is_a_planted_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "u"
    users.mkdir()
    theirs = tmp_path / "their-dir"
    theirs.mkdir()
    theirs.chmod(0o755)
    plant(users / "ep", theirs)
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(users))
    assert main(["configure", "ep"]) == 1
    assert "symbolic link" in capsys.readouterr().err
    assert list(theirs.iterdir()) == []
    assert (theirs.stat().st_mode & 0o777) == 0o755


def test_the_token_storage_refuses_a_planted_link(tmp_path: Path, victim: Path) -> None:
    users = tmp_path / "u"
    users.mkdir()
    plant(users / service.STORAGE_FILE, victim)
    with pytest.raises(AuthError, match="symbolic link"):
        service.build_app(users, "production")
    assert untouched(victim)
