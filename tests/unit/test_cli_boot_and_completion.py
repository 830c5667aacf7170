"""`enable-on-boot` / `disable-on-boot`, shell completion, and the `amqp_port` rewrite."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from endpoint.admin import auth, boot
from endpoint.amqp.queues import QueueInfo
from endpoint.cli.app import build_parser, main
from endpoint.cli.completion import model, script

SECRET = "s3cret-value"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    user = tmp_path / "config dir"
    units = tmp_path / "units"
    units.mkdir()
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(user))
    monkeypatch.setenv("COMPUTE_ENDPOINT_SYSTEMD_DIR", str(units))
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", "0c8b2a8e-51a3-4a52-8a8c-2b7f2f6f6a11")
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", SECRET)
    # Login needs a service; its own tests are end-to-end.
    monkeypatch.setattr(auth, "login", lambda force, prompt: False)

    def no_systemctl(*args: str) -> bool:
        raise AssertionError(f"systemctl {args} called with an overridden unit dir")

    monkeypatch.setattr(boot, "_systemctl", no_systemctl)
    assert main(["configure", "boot-me"]) == 0
    return tmp_path


def test_enable_writes_a_unit_that_carries_the_config_dir(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["enable-on-boot", "boot-me"]) == 0
    unit = env / "units" / "globus-compute-endpoint-boot-me.service"
    text = unit.read_text()
    user = env / "config dir"
    assert f'Environment="GLOBUS_COMPUTE_USER_DIR={user}"' in text
    assert f'"--config-dir" "{user}" "start" "boot-me"' in text
    assert f"WorkingDirectory={user / 'boot-me'}" in text
    assert "Restart=on-failure" in text and "RestartPreventExitStatus=" in text
    assert "KillMode=mixed" in text and "WantedBy=multi-user.target" in text
    assert SECRET not in text, "the secret must not go into a world-readable unit"
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    env_file = user / "boot-me" / boot.BOOT_ENV_FILE
    assert f"EnvironmentFile={env_file}" in text
    assert env_file.read_text() == f"GLOBUS_COMPUTE_CLIENT_SECRET={SECRET}\n"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert "systemctl enable --now globus-compute-endpoint-boot-me.service" in (
        capsys.readouterr().out
    )
    assert main(["enable-on-boot", "boot-me"]) == 1, "never overwrites an existing unit"


def test_disable_really_removes_the_unit_and_its_secret(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["enable-on-boot", "boot-me"]) == 0
    assert main(["disable-on-boot", "boot-me"]) == 0
    assert list((env / "units").iterdir()) == []
    assert not (env / "config dir" / "boot-me" / boot.BOOT_ENV_FILE).exists()
    assert "Removed" in capsys.readouterr().out
    assert main(["disable-on-boot", "boot-me"]) == 0, "disabling twice is fine"
    assert "No systemd unit" in capsys.readouterr().out


def test_unit_values_are_escaped_for_systemd() -> None:
    assert boot.unit_name("a@b") == "globus-compute-endpoint-a\\x40b.service"
    assert boot._exec_word('50% $HOME "x"') == '"50%% $$HOME \\"x\\""'
    assert boot._env_line("K", "a%b$c") == 'Environment="K=a%%b$c"'


def test_enable_needs_a_systemd_unit_dir(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COMPUTE_ENDPOINT_SYSTEMD_DIR", str(env / "missing"))
    assert main(["enable-on-boot", "boot-me"]) == 1
    assert "systemd" in capsys.readouterr().err


# ---- completion ---------------------------------------------------------------------------------


def test_completion_scripts_mention_every_command_and_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, commands = model(build_parser())
    names = {c.name for c in commands}
    assert {"configure", "start", "stop", "restart", "list", "delete", "login", "logout"} <= names
    assert {"whoami", "version", "check-config", "enable-on-boot", "disable-on-boot"} <= names
    for shell in ("bash", "zsh"):
        assert main(["completion", shell]) == 0
        text = capsys.readouterr().out
        assert text.strip()
        for cmd in commands:
            assert cmd.name in text, (shell, cmd.name)
            for opt in cmd.options:
                assert all(flag in text for flag in opt.flags), (shell, opt.flags)


def _complete(words: list[str], user_dir: Path) -> list[str]:
    program = (
        script("bash", build_parser())
        + f"\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        + f"COMP_CWORD={len(words) - 1}\n_compute_endpoint\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    )
    env = {**os.environ, "GLOBUS_COMPUTE_USER_DIR": str(user_dir)}
    out = subprocess.run(
        ["bash", "-c", program], env=env, capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line]


def test_bash_completion_completes_commands_flags_and_endpoint_names(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", "-c", script("bash", build_parser())], check=True)
    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("")
    (tmp_path / "not-an-endpoint").mkdir()
    assert _complete(["compute-endpoint", "st"], tmp_path) == ["start", "stop", "status"]
    assert _complete(["compute-endpoint", "-c", "/x", "star"], tmp_path) == ["start"]
    assert _complete(["compute-endpoint", "start", ""], tmp_path) == ["alpha", "beta"]
    assert "--detach" in _complete(["compute-endpoint", "start", "--d"], tmp_path)
    assert _complete(["compute-endpoint", "list", "--format", ""], tmp_path) == ["table", "json"]
    assert _complete(["compute-endpoint", "completion", ""], tmp_path) == ["bash", "zsh"]


def test_zsh_completion_parses() -> None:
    # .ci/run installs zsh; a machine without it fails here rather than skipping.
    assert shutil.which("zsh"), "zsh is needed to check the zsh completion script"
    subprocess.run(["zsh", "-n", "-c", script("zsh", build_parser())], check=True)


# ---- amqp_port ----------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [443, 5671, 5672])
def test_amqp_port_rewrites_every_queue_url_the_heartbeat_one_included(port: int) -> None:
    infos = {
        name: {"connection_url": f"amqps://u:p@broker.example:{n}/vh", "queue": name}
        for name, n in (("tasks", 1111), ("results", 2222), ("heartbeats", 3333))
    }
    rewritten = [QueueInfo.from_service(info, port).connection_url for info in infos.values()]
    assert rewritten == [f"amqps://u:p@broker.example:{port}/vh"] * 3
    unchanged = QueueInfo.from_service(infos["heartbeats"], None).connection_url
    assert unchanged.endswith(":3333/vh")
