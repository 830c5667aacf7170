"""The appliance's scripts on their own, without Docker: the watchdog's event protocol, the
config rendering, and shellcheck over every shell script."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.appliance.conftest import ROOT

BIN = ROOT / "appliance" / "bin"
SHELL_SCRIPTS = [
    ROOT / "entrypoint",
    BIN / "rabbitmq-run",
    BIN / "run-endpoint",
    BIN / "run-webservice",
    ROOT / "appliance" / "broker" / "rabbitmq-diagnostics",
    ROOT / "appliance" / "prometheus" / "run-prometheus",
]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), BIN / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def event(name: str, payload: str) -> str:
    header = f"ver:3.0 server:supervisor serial:1 pool:watchdog poolserial:1 eventname:{name}"
    return f"{header} len:{len(payload)}\n{payload}"


def test_watchdog_stops_supervisord_with_exit_1_when_a_program_goes_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watchdog = load("watchdog")
    killed: list[tuple[int, int]] = []
    monkeypatch.setenv("APPLIANCE_RUN_DIR", str(tmp_path))
    monkeypatch.setattr(watchdog.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    stdin = io.StringIO(
        event("PROCESS_STATE_EXITED", "processname:endpoint groupname:endpoint expected:0 pid:7")
        + event("PROCESS_STATE_FATAL", "processname:endpoint groupname:endpoint from_state:BACKOFF")
        + event("PROCESS_STATE_EXITED", "processname:broker groupname:broker expected:1 pid:8")
    )
    stdout, log = io.StringIO(), io.StringIO()
    watchdog.serve(stdin, stdout, log)
    # Every event is answered; READY comes before each one and once more before EOF.
    assert stdout.getvalue() == "READY\nRESULT 2\nOK" * 3 + "READY\n"
    assert killed == [(os.getppid(), watchdog.signal.SIGTERM)] * 2
    # The first verdict (FATAL: 1) wins over the clean exit that follows it.
    assert (tmp_path / "exit-code").read_text() == "1\n"
    assert "endpoint went FATAL" in log.getvalue()


def test_an_unexpected_exit_is_left_to_supervisord_to_restart() -> None:
    watchdog = load("watchdog")
    assert watchdog.verdict("PROCESS_STATE_EXITED", {"expected": "0"}) is None
    assert watchdog.verdict("PROCESS_STATE_EXITED", {"expected": "1"}) == 0
    assert watchdog.verdict("PROCESS_STATE_FATAL", {}) == 1


def test_render_expands_the_environment_and_refuses_a_missing_value() -> None:
    render = load("render")
    text = "command=%(ENV_HOME)s/x\nstopwaitsecs=%(ENV_WAIT)s\n"
    assert render.expand(text, {"HOME": "/h%", "WAIT": "8"}) == "command=/h%%/x\nstopwaitsecs=8\n"
    with pytest.raises(SystemExit, match=r"\$WAIT is not set"):
        render.expand(text, {"HOME": "/h"})


@pytest.mark.parametrize("role", ["endpoint", "webservice", "all-in-one"])
def test_every_role_renders_a_config_with_its_programs(
    role: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    render = load("render")
    env = {
        "APPLIANCE_HOME": str(ROOT / "appliance"),
        "APPLIANCE_RUN_DIR": str(tmp_path),
        "GLOBUS_COMPUTE_USER_DIR": str(tmp_path / "gc"),
        "ENDPOINT_NAME": "default",
        "WEBSERVICE_PORT": "5000",
        "BROKER_PORT": "5672",
        "SUPERVISOR_LOGLEVEL": "info",
        "ENDPOINT_STOP_WAIT": "8",
        "WEBSERVICE_STOP_WAIT": "8",
        "BROKER_STOP_WAIT": "8",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    render.main(role)
    conf = (tmp_path / "supervisord.conf").read_text()
    programs = {line[9:-1] for line in conf.splitlines() if line.startswith("[program:")}
    assert programs == {"endpoint": {"endpoint"}, "webservice": {"webservice"}}.get(
        role, {"broker", "webservice", "endpoint"}
    )
    assert "%(ENV_" not in conf and "[eventlistener:watchdog]" in conf


def test_shell_scripts_are_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed (apt-get install shellcheck; .ci/run does)")
    proc = subprocess.run(
        [shellcheck, *map(str, SHELL_SCRIPTS)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout
    for script in SHELL_SCRIPTS:
        assert "set -euo pipefail" in script.read_text(), script
