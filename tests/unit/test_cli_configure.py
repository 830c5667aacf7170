"""`configure`, `check-config` and `version`: the commands that need no service."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from endpoint.admin import configure
from endpoint.cli.app import main
from endpoint.cli.exits import EX_CONFIG
from endpoint.config import EndpointConfig, ManagerConfig, load_endpoint_dir

POLICY = "9b1d2c1e-6d0a-4c37-9d7e-2a3f1b2c4d5e"
SUB = "0e6c1f3a-8a0b-4a38-8c11-7f1e2d3c4b5a"


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "u"))
    return tmp_path / "u"


def _mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def test_configure_writes_a_loadable_private_user_endpoint(
    user_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["configure"]) == 0
    ep = user_dir / "default"
    assert _mode(ep) == "0o700" and _mode(ep / "config.yaml") == "0o600"
    out = capsys.readouterr().out
    assert "Created profile for endpoint named <default>" in out
    assert "compute-endpoint start default" in out
    cfg, _, _ = load_endpoint_dir(ep)
    assert isinstance(cfg, EndpointConfig)


def test_configure_passes_the_service_options_through(user_dir: Path) -> None:
    args = ["configure", "p", "--display-name", "My EP", "--auth-policy", POLICY]
    assert main([*args, "--subscription-id", SUB]) == 0
    data = yaml.safe_load((user_dir / "p" / "config.yaml").read_text())
    assert data["display_name"] == "My EP"
    assert data["authentication_policy"] == POLICY and data["subscription_id"] == SUB


def test_an_existing_endpoint_is_a_clear_message_not_a_traceback(
    user_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["configure", "twice"]) == 0
    before = (user_dir / "twice" / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["configure", "twice"]) == 1
    err = capsys.readouterr().err
    assert "already configured" in err and "Traceback" not in err
    assert (user_dir / "twice" / "config.yaml").read_text() == before


def test_a_bad_name_is_refused_before_anything_is_written(
    user_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["configure", "../escape"]) == 1
    assert "invalid endpoint name" in capsys.readouterr().err
    assert not (user_dir / ".." / "escape").exists()


def test_multi_user_writes_a_manager_and_its_template_files(
    user_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(configure, "is_privileged", lambda: False)
    assert main(["configure", "--multi-user", "mep", "--contact-email", "ops@example.org"]) == 0
    ep = user_dir / "mep"
    names = sorted(p.name for p in ep.iterdir())
    assert names == [
        "config.yaml",
        "user_config_schema.json",
        "user_config_template.yaml.j2",
        "user_environment.yaml",
    ]
    assert all(_mode(p) == "0o600" for p in ep.iterdir())
    cfg, _, _ = load_endpoint_dir(ep)
    assert isinstance(cfg, ManagerConfig) and cfg.email == "ops@example.org"
    schema = json.loads((ep / "user_config_schema.json").read_text())
    assert {"endpoint_setup", "worker_init", "requirements"} <= set(schema["properties"])
    template = (ep / "user_config_template.yaml.j2").read_text()
    assert "type: GlobusComputeEngine" in template and "type: LocalProvider" in template


def test_the_default_template_renders_to_a_valid_user_config(user_dir: Path) -> None:
    from endpoint.config import load_config_text
    from endpoint.manager import defaults, templating

    # As a manager renders it (the template calls user_python_environment(...)).
    source = templating.TemplateSource(defaults.USER_TEMPLATE)
    reserved = templating.Reserved(templating.local_runtime(), {}, {}, {})
    rendered = templating.render_text(source, {"worker_init": "module load x"}, reserved)
    cfg = load_config_text(rendered)
    assert isinstance(cfg, EndpointConfig)
    assert cfg.engine.type == "GlobusComputeEngine" and cfg.idle_heartbeats_soft == 10


def test_as_root_multi_user_adds_an_identity_mapping_example(
    user_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(configure, "is_privileged", lambda: True)
    assert main(["configure", "--multi-user=true", "root-mep", "--contact-email", "a@b.org"]) == 0
    ep = user_dir / "root-mep"
    mapping = ep / "example_identity_mapping_config.json"
    assert json.loads(mapping.read_text())[0]["DATA_TYPE"].startswith("expression_identity")
    # Read by the mapped (unprivileged) user once a user endpoint starts.
    assert _mode(ep / "user_config_template.yaml.j2") == "0o644"
    data = yaml.safe_load((ep / "config.yaml").read_text())
    assert data["identity_mapping_config_path"] == str(mapping)


def test_multi_user_false_is_a_plain_user_endpoint(user_dir: Path) -> None:
    assert main(["configure", "--multi-user", "false", "plain"]) == 0
    assert "engine" in yaml.safe_load((user_dir / "plain" / "config.yaml").read_text())


def test_a_failure_part_way_leaves_nothing_behind(
    user_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = configure._write
    calls = {"n": 0}

    def flaky(path: Path, text: str, created: configure.Created, mode: int = 0o600) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real_write(path, text, created, mode)

    monkeypatch.setattr(configure, "_write", flaky)
    with pytest.raises(OSError):
        configure.configure("broken", configure.Options(multi_user=True))
    assert not (user_dir / "broken").exists()
    # A directory that existed before is kept; only the files written are removed.
    (user_dir / "kept").mkdir(parents=True)
    (user_dir / "kept" / "notes.txt").write_text("mine")
    calls["n"] = 0
    with pytest.raises(OSError):
        configure.configure("kept", configure.Options(multi_user=True))
    assert sorted(p.name for p in (user_dir / "kept").iterdir()) == ["notes.txt"]


def test_check_config_prints_the_parsed_config_or_the_errors(
    user_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    main(["configure", "chk"])
    capsys.readouterr()
    assert main(["check-config", "chk"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["engine"]["type"] == "ProcessPoolEngine"
    assert "valid" in captured.err
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  type: ThreadPoolEngine\nheartbeat_perod: 3\n")
    assert main(["check-config", str(bad)]) == EX_CONFIG
    captured = capsys.readouterr()
    assert "heartbeat_perod" in captured.err and "line 3" in captured.err
    assert captured.out == ""


def test_check_config_catches_engine_options_the_engine_rejects(
    user_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "engine.yaml"
    bad.write_text("engine:\n  type: ThreadPoolEngine\n  max_workers: 0\n")
    assert main(["check-config", str(bad)]) == EX_CONFIG


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    # The official format first (scripts parse it), then what actually runs.
    first, second = capsys.readouterr().out.splitlines()
    assert first == "Globus Compute endpoint version: 4.19.0"
    assert second.startswith("container-compute-endpoint ")


def test_help_documents_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for code in (0, 1, 2, 65, 69, 70, 73, 75, 77, 78, 130, 255):
        assert f"\n  {code} " in out, code


def test_umask_is_restored_after_configure(user_dir: Path) -> None:
    before = os.umask(0o022)
    try:
        configure.configure("u", configure.Options())
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)


def test_delete_of_a_never_registered_endpoint_needs_no_service(
    user_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COMPUTE_SERVICE_URL", "http://127.0.0.1:9")  # nothing listens there
    main(["configure", "local-only"])
    monkeypatch.setattr("builtins.input", lambda _prompt: (_ for _ in ()).throw(EOFError))
    assert main(["delete", "local-only"]) == 1, "no terminal, no confirmation"
    assert (user_dir / "local-only").exists()
    assert main(["delete", "--yes", "local-only"]) == 0
    assert not (user_dir / "local-only").exists()
    assert "deleted from this machine" in capsys.readouterr().out
