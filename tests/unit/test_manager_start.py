"""`start` of a manager endpoint: what is refused before anything reaches the service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from endpoint.amqp.queues import AmqpCreds
from endpoint.cli.app import main
from endpoint.cli.exits import EX_CONFIG
from endpoint.errors import ConfigError
from endpoint.manager.command import StartRequest
from endpoint.manager.core import read_user_environment, user_environment
from endpoint.manager.identity import LocalUser

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the rule is for root managers")


@pytest.fixture
def manager_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "u"))
    # Nothing here may reach a service: point every client at a closed port.
    monkeypatch.setenv("COMPUTE_SERVICE_URL", "http://127.0.0.1:9")
    assert main(["configure", "--multi-user", "mgr", "--contact-email", "a@example.org"]) == 0
    return tmp_path / "u" / "mgr"


@root_only
def test_a_root_manager_needs_a_contact_email(
    manager_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = manager_dir / "config.yaml"
    config.write_text(config.read_text().replace("email: a@example.org\n", ""))
    assert main(["start", "mgr"]) == EX_CONFIG
    assert "needs `email`" in capsys.readouterr().err


def test_pam_is_refused_rather_than_silently_skipped(
    manager_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open(manager_dir / "config.yaml", "a") as f:
        f.write("pam:\n  enable: true\n")
    assert main(["start", "mgr"]) == EX_CONFIG
    assert "pam.enable" in capsys.readouterr().err


def test_a_broken_template_or_schema_fails_start(
    manager_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = manager_dir / "user_config_template.yaml.j2"
    template.write_text("engine:\n  type: {% if %}\n")
    assert main(["start", "mgr"]) == EX_CONFIG
    assert "user config template, line 2" in capsys.readouterr().err
    template.write_text("engine: {type: ThreadPoolEngine}\n")
    (manager_dir / "user_config_schema.json").write_text('{"type": 12}')
    assert main(["start", "mgr"]) == EX_CONFIG
    assert "not a valid JSON schema" in capsys.readouterr().err
    assert not (manager_dir / "daemon.pid").exists()


@root_only
def test_a_broken_identity_mapping_fails_start(
    manager_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (manager_dir / "example_identity_mapping_config.json").write_text("[{")
    assert main(["start", "mgr"]) == EX_CONFIG
    assert "not valid JSON" in capsys.readouterr().err


def test_user_environment_files_are_flat_key_value_pairs(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    assert read_user_environment(path) == {}
    path.write_text("A: 1\nB: yes\nC:\nD: text\n")
    assert read_user_environment(path) == {"A": "1", "B": "true", "C": "", "D": "text"}
    path.write_text("A: [1, 2]\n")
    with pytest.raises(ConfigError, match="plain value"):
        read_user_environment(path)
    path.write_text("- A\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_user_environment(path)


def test_the_user_endpoint_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("INHERITED", "yes")
    req = StartRequest(
        name="uep.a.b",
        endpoint_id="x",
        amqp_creds=AmqpCreds("x", {}),
        user_opts={},
        user_runtime={"python": {"version": "3.12.1"}, "globus_compute_sdk_version": "4.19.0"},
        identities=[],
        username=None,
    )
    user = LocalUser.current()
    env = user_environment(user, req, {"GC_USER_SDK_VERSION": "pinned"}, privileged=False)
    assert env["INHERITED"] == "yes" and "GLOBUS_COMPUTE_CLIENT_SECRET" not in env
    assert env["GC_USER_PYTHON_VERSION"] == "3.12.1" and env["GC_USER_SDK_VERSION"] == "pinned"
    assert env["GLOBUS_COMPUTE_ENDPOINT_NAME"] == "uep.a.b" and env["HOME"] == user.home
    clean = user_environment(user, req, {}, privileged=True)
    assert "INHERITED" not in clean and clean["USER"] == user.name
    assert clean["PATH"].startswith("/usr/local/bin:/usr/bin:/bin:")


def test_the_hidden_command_reads_its_launch_document_on_stdin() -> None:
    r, w = os.pipe()
    cli = [sys.executable, "-m", "endpoint.cli", "_start-user-endpoint", "uep.x"]
    proc = subprocess.run(
        [*cli, "--status-fd", str(w)],
        input=b'{"name": "uep.x"}\n',
        pass_fds=(w,),
        capture_output=True,
        timeout=60,
        check=False,
    )
    os.close(w)
    with os.fdopen(r, "rb") as status:
        report = json.loads(status.read())
    assert proc.returncode == 65
    assert "invalid launch document" in report["error"]
