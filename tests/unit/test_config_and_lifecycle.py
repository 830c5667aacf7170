"""Config loading errors, endpoint states and the CLI commands that need no service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from endpoint.cli.app import main
from endpoint.cli.exits import EX_CANTCREAT, EX_CONFIG
from endpoint.config import EndpointConfig, ManagerConfig, load_config_text
from endpoint.errors import AlreadyRunning, ConfigError
from endpoint.host.dirs import write_endpoint_id
from endpoint.host.pidlock import PidLock, State, clean_stale_pid, state_of


def test_defaults_match_the_official_endpoint() -> None:
    cfg = load_config_text("engine:\n  type: ThreadPoolEngine\n")
    assert isinstance(cfg, EndpointConfig)
    assert cfg.heartbeat_period == 30 and cfg.idle_heartbeats_hard == 5760
    assert cfg.amqp_port is None
    mgr = load_config_text("display_name: m\n")
    assert isinstance(mgr, ManagerConfig) and mgr.public is False


def test_unknown_key_is_named_with_its_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text("engine:\n  type: ThreadPoolEngine\nheartbeat_perod: 10\n")
    assert "heartbeat_perod (line 3): unknown key" in str(err.value)


def test_wrong_type_and_bad_yaml_are_clear() -> None:
    with pytest.raises(ConfigError, match=r"amqp_port \(line 1\)"):
        load_config_text("amqp_port: 1234\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_text("engine: [unclosed\n")
    # No engine type means GlobusComputeEngine, which has no `max_workers`.
    with pytest.raises(ConfigError, match="renamed it max_workers_per_node"):
        load_config_text("engine:\n  max_workers: 2\n")


def test_heartbeat_period_is_clamped_to_five_seconds() -> None:
    assert load_config_text("heartbeat_period: 1\n").heartbeat_period == 5


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path))
    return tmp_path


def test_states_initialized_running_stopped(user_dir: Path) -> None:
    ep = user_dir / "ep"
    ep.mkdir()
    assert state_of(ep) is State.INITIALIZED
    write_endpoint_id(ep, "4ff1b5b8-7a4e-4b1a-9a8e-6b3bb0e3b4a1")
    assert state_of(ep) is State.STOPPED
    lock = PidLock.acquire(ep)
    assert state_of(ep) is State.RUNNING
    with pytest.raises(AlreadyRunning):
        PidLock.acquire(ep)
    old = os.stat(ep / "daemon.pid").st_mtime - 120
    os.utime(ep / "daemon.pid", (old, old))
    assert state_of(ep) is State.DISCONNECTED
    lock.release()
    assert state_of(ep) is State.STOPPED


def test_a_stale_pid_file_from_a_dead_process_is_cleaned(user_dir: Path) -> None:
    ep = user_dir / "ep"
    ep.mkdir()
    # A child takes the lock and dies without cleaning up, as after kill -9 or a reboot.
    code = (
        "import sys; from pathlib import Path; from endpoint.host.pidlock import PidLock;"
        f"PidLock.acquire(Path({str(ep)!r})); import os; os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (ep / "daemon.pid").exists()
    # The seeds' rule: a pid file nobody holds is Disconnected until start/stop cleans it.
    assert state_of(ep) is State.DISCONNECTED
    assert clean_stale_pid(ep) and not (ep / "daemon.pid").exists()


def test_cli_configure_list_and_errors(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["configure", "alpha"]) == 0
    assert (user_dir / "alpha" / "config.yaml").exists()
    assert oct((user_dir / "alpha").stat().st_mode & 0o777) == "0o700"
    assert main(["configure", "alpha"]) == 1
    assert "already configured" in capsys.readouterr().err
    assert main(["list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"endpoint_id": None, "status": "Initialized", "name": "alpha"}]
    (user_dir / "alpha" / "config.yaml").write_text("bogus_key: 1\n")
    assert main(["start", "alpha"]) == EX_CONFIG
    assert "bogus_key (line 1): unknown key" in capsys.readouterr().err


def test_cli_start_refuses_a_running_endpoint(user_dir: Path) -> None:
    main(["configure", "beta"])
    lock = PidLock.acquire(user_dir / "beta")
    try:
        assert main(["start", "beta"]) == EX_CANTCREAT
    finally:
        lock.release()


def test_cli_stop_of_a_stopped_endpoint_is_fine(
    user_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["configure", "gamma"])
    assert main(["stop", "gamma"]) == 0
    assert "not running" in capsys.readouterr().out
