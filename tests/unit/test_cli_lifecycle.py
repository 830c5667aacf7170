"""Endpoint names, NAME_OR_UUID resolution, states, the pid lock and `list` (no service)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from endpoint.cli.app import main
from endpoint.errors import AlreadyRunning, LifecycleError, NotConfigured
from endpoint.host.dirs import resolve, validate_name, write_endpoint_id
from endpoint.host.pidlock import PidLock, State, clean_stale_pid, probe, state_of

EP_ID = "4ff1b5b8-7a4e-4b1a-9a8e-6b3bb0e3b4a1"


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "u"))
    monkeypatch.delenv("GLOBUS_COMPUTE_ENDPOINT_DIR", raising=False)
    return tmp_path / "u"


def _configured(user_dir: Path, name: str, endpoint_id: str | None = None) -> Path:
    ep = user_dir / name
    ep.mkdir(parents=True)
    (ep / "config.yaml").write_text("engine:\n  type: ThreadPoolEngine\n")
    if endpoint_id:
        write_endpoint_id(ep, endpoint_id)
    return ep


@pytest.mark.parametrize(
    "bad", ["", "a/b", "a\\b", "sp ace", "tab\tname", "q'uote", 'd"q', ".hidden", "a..b", EP_ID]
)
def test_invalid_endpoint_names_are_refused_with_the_reason(bad: str) -> None:
    with pytest.raises(LifecycleError, match="invalid endpoint name"):
        validate_name(bad)


def test_a_name_longer_than_128_characters_is_refused() -> None:
    assert validate_name("x" * 128)
    with pytest.raises(LifecycleError, match="longer than 128"):
        validate_name("x" * 129)


def test_name_or_uuid_resolves_by_endpoint_json(user_dir: Path) -> None:
    ep = _configured(user_dir, "by-id", EP_ID)
    assert resolve(EP_ID) == ep
    assert resolve(EP_ID.upper()) == ep
    assert resolve("by-id") == ep
    with pytest.raises(NotConfigured, match="Failed to find endpoint configuration"):
        resolve("0c8b2a8e-51a3-4a52-8a8c-2b7f2f6f6a11")
    with pytest.raises(NotConfigured, match="compute-endpoint configure nope"):
        resolve("nope")


def test_the_default_name_and_the_endpoint_dir_variable(
    user_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default = _configured(user_dir, "default")
    assert resolve(None) == default
    elsewhere = tmp_path / "elsewhere" / "ep"
    elsewhere.mkdir(parents=True)
    (elsewhere / "config.yaml").write_text("engine:\n  type: ThreadPoolEngine\n")
    monkeypatch.setenv("GLOBUS_COMPUTE_ENDPOINT_DIR", str(elsewhere))
    assert resolve(None) == elsewhere
    assert resolve("default") == default  # an explicit name still wins


def test_the_four_states_follow_the_seeds(user_dir: Path) -> None:
    ep = _configured(user_dir, "ep")
    assert state_of(ep) is State.INITIALIZED
    write_endpoint_id(ep, EP_ID)
    assert state_of(ep) is State.STOPPED
    lock = PidLock.acquire(ep)
    found = probe(ep)
    assert (found.state, found.pid, found.locked) == (State.RUNNING, os.getpid(), True)
    with pytest.raises(AlreadyRunning):
        PidLock.acquire(ep)
    old = time.time() - 120
    os.utime(ep / "daemon.pid", (old, old))
    found = probe(ep)
    assert found.state is State.DISCONNECTED and found.locked and found.age > 100
    lock.release()
    assert state_of(ep) is State.STOPPED and not (ep / "daemon.pid").exists()


def _die_holding_the_lock(ep: Path) -> None:
    code = (
        "import os, sys; from pathlib import Path; from endpoint.host.pidlock import PidLock;"
        f"PidLock.acquire(Path({str(ep)!r})); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_pid_file_left_by_a_dead_process_reads_disconnected_and_is_cleaned(
    user_dir: Path,
) -> None:
    ep = _configured(user_dir, "ep", EP_ID)
    _die_holding_the_lock(ep)  # as after kill -9 or a reboot
    found = probe(ep)
    assert found.state is State.DISCONNECTED and found.stale_file and not found.locked
    assert clean_stale_pid(ep) and not (ep / "daemon.pid").exists()
    assert state_of(ep) is State.STOPPED
    assert not clean_stale_pid(ep)


def test_a_stale_pid_file_never_blocks_a_new_lock(user_dir: Path) -> None:
    ep = _configured(user_dir, "ep")
    _die_holding_the_lock(ep)
    lock = PidLock.acquire(ep)
    try:
        assert (ep / "daemon.pid").read_text().strip() == str(os.getpid())
        assert not clean_stale_pid(ep), "a held lock is never cleaned"
    finally:
        lock.release()


def test_the_toucher_keeps_a_long_start_fresh(user_dir: Path) -> None:
    ep = _configured(user_dir, "ep")
    lock = PidLock.acquire(ep)
    try:
        old = time.time() - 120
        os.utime(ep / "daemon.pid", (old, old))
        lock.start_touching(every_s=0.05)
        deadline = time.monotonic() + 5
        while state_of(ep) is not State.RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state_of(ep) is State.RUNNING
    finally:
        lock.release()


def test_list_table_matches_the_seeds_and_json_is_machine_readable(
    user_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list"]) == 0
    assert "No endpoints configured!" in capsys.readouterr().out
    _configured(user_dir, "just_configured")
    _configured(user_dir, "my_first_endpoint", EP_ID)
    _die_holding_the_lock(_configured(user_dir, "unexpected_disconnect", EP_ID))
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (
        "|             Endpoint ID              |    Status    |     Endpoint Name     |"
    )
    assert lines[2].startswith("+====") and lines[0].startswith("+----")
    assert "| None                                 | Initialized  | just_configured" in lines[3]
    assert f"| {EP_ID} | Stopped      | my_first_endpoint" in lines[5]
    assert "| Disconnected | unexpected_disconnect |" in lines[7]
    assert len(lines) == 9
    assert main(["list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["status"]) for r in rows] == [
        ("just_configured", "Initialized"),
        ("my_first_endpoint", "Stopped"),
        ("unexpected_disconnect", "Disconnected"),
    ]


def test_directories_without_a_config_are_not_endpoints(
    user_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (user_dir / "venvs").mkdir(parents=True)
    (user_dir / "storage.db").write_text("")
    assert main(["list", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_config_dir_option_wins_over_the_environment(
    user_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other dir"
    assert main(["-c", str(other), "configure", "there"]) == 0
    assert (other / "there" / "config.yaml").exists()
    assert oct(other.stat().st_mode & 0o777) == "0o700"
    capsys.readouterr()
    assert main(["--config-dir", str(other), "list", "--format", "json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["there"]
