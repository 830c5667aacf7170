"""`compute-endpoint render-user-config`: the manager's rendering, for an administrator."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from endpoint.cli.app import main
from endpoint.cli.exits import EX_CONFIG, EX_USAGE

TEMPLATE = "engine:\n  type: ThreadPoolEngine\n  max_workers: {{ workers }}\n"


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "u"))
    return tmp_path / "u"


def test_renders_a_template_file_with_options_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t.j2").write_text(TEMPLATE)
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"workers": 3})))
    assert main(["render-user-config", "-t", str(tmp_path / "t.j2"), "-o", "-"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {
        "engine": {"type": "ThreadPoolEngine", "max_workers": 3}
    }


def test_uses_a_configured_managers_template_and_schema(
    user_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["configure", "--multi-user", "mgr", "--contact-email", "a@example.org"]) == 0
    ep = user_dir / "mgr"
    (ep / "user_config_template.yaml.j2").write_text(TEMPLATE)
    schema = {"type": "object", "properties": {"workers": {"type": "integer"}}}
    (ep / "user_config_schema.json").write_text(json.dumps(schema))
    (tmp_path / "o.json").write_text('{"workers": 2}')
    capsys.readouterr()
    assert main(["render-user-config", "-e", "mgr", "-o", str(tmp_path / "o.json")]) == 0
    assert "max_workers: 2" in capsys.readouterr().out
    (tmp_path / "o.json").write_text('{"workers": "two"}')
    assert main(["render-user-config", "-e", "mgr", "-o", str(tmp_path / "o.json")]) == EX_CONFIG
    assert "workers: 'two' is not of type 'integer'" in capsys.readouterr().err


def test_a_schema_given_on_the_command_line_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t.j2").write_text(TEMPLATE)
    (tmp_path / "s.json").write_text('{"required": ["account"]}')
    (tmp_path / "o.json").write_text('{"workers": 1}')
    args = ["-t", str(tmp_path / "t.j2"), "-s", str(tmp_path / "s.json")]
    assert main(["render-user-config", *args, "-o", str(tmp_path / "o.json")]) == EX_CONFIG
    assert "'account' is a required property" in capsys.readouterr().err


def test_only_one_option_may_read_stdin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render-user-config", "-t", "-", "-o", "-"]) == EX_CONFIG
    assert "only one option may read stdin" in capsys.readouterr().err


def test_a_missing_variable_and_a_missing_template_are_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t.j2").write_text(TEMPLATE)
    assert main(["render-user-config", "-t", str(tmp_path / "t.j2")]) == EX_CONFIG
    assert "'workers' is undefined" in capsys.readouterr().err
    assert main(["render-user-config"]) == EX_CONFIG
    assert "give a template (-t) or a manager endpoint (-e)" in capsys.readouterr().err


def test_reserved_variables_can_be_overridden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tpl = TEMPLATE.replace("{{ workers }}", "2") + (
        "display_name: {{ _GC.mapped_identity.local.uname }}-{{ _GC.parent_config.display_name }}\n"
        "endpoint_setup: {{ _GC.user_runtime.python_version }}\n"
    )
    (tmp_path / "t.j2").write_text(tpl)
    (tmp_path / "rt.json").write_text('{"python_version": "3.99"}')
    (tmp_path / "id.json").write_text('{"local": {"uname": "alice"}}')
    (tmp_path / "p.yaml").write_text("display_name: boss\n")
    args = [
        "--user-runtime",
        str(tmp_path / "rt.json"),
        "--mapped-identity",
        str(tmp_path / "id.json"),
    ]
    args += ["--parent-config", str(tmp_path / "p.yaml")]
    assert main(["render-user-config", "-t", str(tmp_path / "t.j2"), *args]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["display_name"] == "alice-boss" and out["endpoint_setup"] == "3.99"


def test_the_hidden_user_endpoint_command_refuses_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty())
    assert main(["_start-user-endpoint", "uep.x"]) == EX_USAGE
    assert "started by a core endpoint" in capsys.readouterr().err


def test_the_hidden_command_is_not_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "render-user-config" in out and "_start-user-endpoint" not in out
