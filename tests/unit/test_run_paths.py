"""Where a running endpoint keeps its files (official 4.16): `paths:`, then
GLOBUS_COMPUTE_ENDPOINT_DIR / GLOBUS_COMPUTE_LOG_PATH, then the defaults; and the values a
running endpoint publishes for `endpoint_setup` and its workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from endpoint.admin.register import Loaded
from endpoint.amqp.queues import AmqpCreds
from endpoint.config import load_config_text
from endpoint.errors import LifecycleError
from endpoint.host.dirs import (
    ENDPOINT_DIR_ENV,
    ENDPOINT_NAME_ENV,
    LOG_PATH_ENV,
    RunPaths,
    export_paths,
    run_paths,
    started_paths,
)
from endpoint.manager.command import StartRequest
from endpoint.manager.core import user_environment
from endpoint.manager.identity import LocalUser


def test_the_config_wins_over_the_environment_which_wins_over_the_defaults(
    tmp_path: Path,
) -> None:
    default = tmp_path / "default"
    env = {ENDPOINT_DIR_ENV: str(tmp_path / "env-dir"), LOG_PATH_ENV: str(tmp_path / "env.log")}
    assert run_paths(default, None, None, {}) == run_paths(default, None, None, {"X": "1"})
    assert run_paths(default, None, None, {}).log == default / "endpoint.log"
    from_env = run_paths(default, None, None, env)
    assert (from_env.ep_dir, from_env.log) == (tmp_path / "env-dir", tmp_path / "env.log")
    only_dir = run_paths(default, None, None, {ENDPOINT_DIR_ENV: str(tmp_path / "d")})
    assert only_dir.log == tmp_path / "d" / "endpoint.log"  # the log follows the directory
    configured = run_paths(default, tmp_path / "cfg", tmp_path / "cfg.log", env)
    assert (configured.ep_dir, configured.log) == (tmp_path / "cfg", tmp_path / "cfg.log")


def test_environment_values_expand_and_must_be_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRATCH", str(tmp_path))
    found = run_paths(tmp_path, None, None, {ENDPOINT_DIR_ENV: "$SCRATCH/eps/one"})
    assert found.ep_dir == tmp_path / "eps" / "one"
    with pytest.raises(LifecycleError, match=r"\$GLOBUS_COMPUTE_LOG_PATH must be an absolute"):
        run_paths(tmp_path, None, None, {LOG_PATH_ENV: "logs/ep.log"})


def test_the_wrong_kind_of_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(LifecycleError, match="exists and is not a directory"):
        run_paths(tmp_path, tmp_path / "file", None, {})
    with pytest.raises(LifecycleError, match="is a directory, not a file"):
        run_paths(tmp_path / "ep", None, tmp_path, {})


def test_a_started_endpoint_reads_only_the_log_variable(tmp_path: Path) -> None:
    # `resolve` already used GLOBUS_COMPUTE_ENDPOINT_DIR to find the config directory.
    env = {ENDPOINT_DIR_ENV: str(tmp_path / "elsewhere"), LOG_PATH_ENV: str(tmp_path / "x.log")}
    found = started_paths(tmp_path / "conf", None, None, env)
    assert (found.ep_dir, found.log) == (tmp_path / "conf", tmp_path / "x.log")
    work = started_paths(tmp_path / "conf", tmp_path / "work", None, {})
    assert work.log == tmp_path / "work" / "endpoint.log"


def test_loaded_log_path_follows_paths_then_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "engine:\n  type: ThreadPoolEngine\n"
    cfg = load_config_text(text, base_dir=tmp_path)
    loaded = Loaded("ep", tmp_path, cfg, text, tmp_path / "config.yaml")
    monkeypatch.delenv(LOG_PATH_ENV, raising=False)
    assert loaded.log_path == tmp_path / "endpoint.log"
    monkeypatch.setenv(LOG_PATH_ENV, str(tmp_path / "var.log"))
    assert loaded.log_path == tmp_path / "var.log"
    text += "paths:\n  endpoint_log: logs/ep.log\n"
    cfg = load_config_text(text, base_dir=tmp_path)
    assert Loaded("ep", tmp_path, cfg, text, tmp_path).log_path == tmp_path / "logs" / "ep.log"


def test_export_publishes_the_three_variables_and_restores_the_old_ones(tmp_path: Path) -> None:
    env = {ENDPOINT_DIR_ENV: "/before", "OTHER": "kept"}
    restore = export_paths("ep1", tmp_path, tmp_path / "l.log", env)
    assert env == {
        ENDPOINT_NAME_ENV: "ep1",
        ENDPOINT_DIR_ENV: str(tmp_path),
        LOG_PATH_ENV: str(tmp_path / "l.log"),
        "OTHER": "kept",
    }
    restore()
    assert env == {ENDPOINT_DIR_ENV: "/before", "OTHER": "kept"}


def test_a_user_endpoint_gets_its_name_and_not_the_core_endpoints_paths(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Inherited from the core endpoint, GLOBUS_COMPUTE_ENDPOINT_DIR would make the user
    # endpoint take the core endpoint's directory (and wait forever on its lock).
    monkeypatch.setenv(ENDPOINT_DIR_ENV, "/core/endpoint")
    monkeypatch.setenv(LOG_PATH_ENV, "/core/endpoint.log")
    monkeypatch.setenv("FUNCX_SDK_CLIENT_SECRET", "s3cret")
    req = StartRequest(
        name="uep.a.b",
        endpoint_id="x",
        amqp_creds=AmqpCreds("x", {}),
        user_opts={},
        user_runtime={},
        identities=[],
        username=None,
    )
    user = LocalUser.current()
    env = user_environment(user, req, {}, privileged=False)
    assert env[ENDPOINT_NAME_ENV] == "uep.a.b"
    assert not {ENDPOINT_DIR_ENV, LOG_PATH_ENV, "FUNCX_SDK_CLIENT_SECRET"} & set(env)
    # ... while the administrator's user_environment.yaml may set them per user endpoint.
    mine = {ENDPOINT_DIR_ENV: str(tmp_path / "$USER"), LOG_PATH_ENV: str(tmp_path / "l.log")}
    env = user_environment(user, req, mine, privileged=False)
    assert env[ENDPOINT_DIR_ENV] == str(tmp_path / "$USER")
    # The user endpoint expands them in its own environment (as that user).
    monkeypatch.setenv("USER", "jo")
    found = run_paths(tmp_path / "default", None, None, env)
    assert found == RunPaths(tmp_path / "jo", tmp_path / "l.log")
