"""What users of the official endpoint 4.16-4.19 bring along: the funcX-era credential variables
and command name, the `version` format, `public` and `debug` on any endpoint, both names of
the core endpoint's Python config class, and the `kubernetes` extra."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from endpoint.admin import service
from endpoint.cli import legacy_env
from endpoint.cli.app import main
from endpoint.cli.exits import EX_CONFIG
from endpoint.config import EndpointConfig, ManagerConfig, load_config, load_config_text

BIN = Path(sys.executable).parent


def test_funcx_variables_become_the_current_ones_with_a_warning() -> None:
    env = {"FUNCX_SDK_CLIENT_ID": "cid", "FUNCX_SDK_CLIENT_SECRET": "sec", "PATH": "/bin"}
    warnings = legacy_env.adopt(env)
    assert env == {"GLOBUS_COMPUTE_CLIENT_ID": "cid", "GLOBUS_COMPUTE_CLIENT_SECRET": "sec",
                   "PATH": "/bin"}  # fmt: skip
    assert len(warnings) == 2 and all("deprecated" in w for w in warnings)
    assert "set GLOBUS_COMPUTE_CLIENT_ID instead" in warnings[0]


def test_the_current_variables_win() -> None:
    env = {"FUNCX_SDK_CLIENT_ID": "old", "GLOBUS_COMPUTE_CLIENT_ID": "new"}
    (warning,) = legacy_env.adopt(env)
    assert env == {"GLOBUS_COMPUTE_CLIENT_ID": "new"}
    assert "ignored because GLOBUS_COMPUTE_CLIENT_ID is set" in warning
    assert legacy_env.adopt({}) == []


def test_every_command_adopts_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    monkeypatch.setenv("FUNCX_SDK_CLIENT_ID", "cid")
    monkeypatch.setenv("FUNCX_SDK_CLIENT_SECRET", "sec")
    assert main(["version"]) == 0
    assert "FUNCX_SDK_CLIENT_ID is deprecated" in capsys.readouterr().err
    assert os.environ["GLOBUS_COMPUTE_CLIENT_ID"] == "cid"
    assert os.environ["GLOBUS_COMPUTE_CLIENT_SECRET"] == "sec"
    assert "FUNCX_SDK_CLIENT_SECRET" not in os.environ  # children see only the new names


@pytest.mark.parametrize("command", ["funcx-endpoint", "globus-compute-endpoint"])
def test_the_official_command_names_print_the_official_version_format(command: str) -> None:
    exe = BIN / command
    assert exe.exists(), f"{exe} missing: reinstall the project (make venv: pip install -e .)"
    done = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.splitlines()[0]
        == f"Globus Compute endpoint version: {service.ENDPOINT_PROTOCOL_VERSION}"
    )


def test_public_is_accepted_on_a_single_user_endpoint_and_sent() -> None:
    text = "public: true\nengine:\n  type: ThreadPoolEngine\n"
    cfg = load_config_text(text)
    assert isinstance(cfg, EndpointConfig) and cfg.public
    assert service.registration_body("ep", text, cfg)["public"] is True
    quiet = load_config_text("engine:\n  type: ThreadPoolEngine\n")
    assert service.registration_body("ep", "", quiet)["public"] is False


def test_debug_in_the_config_turns_on_debug_logs_of_a_single_user_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "u"))
    ep = tmp_path / "u" / "dbg"
    ep.mkdir(parents=True)
    # Fails in endpoint_setup: before any service is needed, after logging is set up.
    (ep / "config.yaml").write_text(
        "debug: true\nengine:\n  type: ThreadPoolEngine\nendpoint_setup: exit 3\n"
    )
    try:
        assert main(["start", "dbg"]) == EX_CONFIG
        assert logging.getLogger("endpoint").getEffectiveLevel() == logging.DEBUG
        assert " DEBUG " in (ep / "endpoint.log").read_text()
        (ep / "config.yaml").write_text(
            "engine:\n  type: ThreadPoolEngine\nendpoint_setup: exit 3\n"
        )
        (ep / "endpoint.log").unlink()
        assert main(["start", "dbg"]) == EX_CONFIG
        assert " DEBUG " not in (ep / "endpoint.log").read_text()
    finally:
        main(["version"])  # back to the quiet console logging of a command


@pytest.mark.parametrize("name", ["CoreEndpointConfig", "ManagerEndpointConfig"])
def test_both_names_of_the_core_endpoint_config_class_load(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.py"
    path.write_text(
        f"from globus_compute_endpoint.endpoint.config import {name}\n"
        f"config = {name}(email='a@example.org', public=True)\n"
    )
    with pytest.warns(DeprecationWarning, match="config.py is deprecated"):
        cfg, _ = load_config(path)
    assert isinstance(cfg, ManagerConfig) and cfg.email == "a@example.org" and cfg.public
    renamed = "ManagerEndpointConfig is deprecated; use CoreEndpointConfig" in caplog.text
    assert renamed == (name == "ManagerEndpointConfig")
