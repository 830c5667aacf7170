"""`configure`'s 4.16-4.19 options: the file overrides (`--core-config`, its deprecated
spelling `--manager-config`, `--template-config`, `--schema-config`, `--user-env-config`,
`--id-mapping-config`), the contact email a core endpoint needs, the authentication policy
family, and the compatibility flags, checked against the files written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from endpoint.admin import configure
from endpoint.cli.app import main
from endpoint.cli.exits import EX_CONFIG, EX_FAILURE, EX_USAGE
from endpoint.config import EndpointConfig, ManagerConfig, load_endpoint_dir
from endpoint.config.overrides import MAX_OVERRIDE_BYTES

POLICY = "9b1d2c1e-6d0a-4c37-9d7e-2a3f1b2c4d5e"
EMAIL = ["--contact-email", "ops@example.org"]
CORE = ["--multi-user", "true", *EMAIL]


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "u"))
    monkeypatch.setattr(configure, "is_privileged", lambda: False)
    return tmp_path / "u"


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _config(user_dir: Path, name: str) -> dict[str, object]:
    data = yaml.safe_load((user_dir / name / "config.yaml").read_text())
    assert isinstance(data, dict)
    return data


# ---- core endpoints: email, public, the new name ---------------------------------------


def test_a_core_endpoint_needs_a_contact_email(
    user_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["configure", "--multi-user", "true", "core"]) == EX_FAILURE
    assert "Email must be specified via --contact-email" in capsys.readouterr().err
    assert not (user_dir / "core").exists()
    assert main(["configure", *CORE, "core"]) == 0
    data = _config(user_dir, "core")
    # As the official configure writes it: `email`, and listed for its users.
    assert data["email"] == "ops@example.org" and data["public"] is True
    assert "engine" not in data


def test_core_config_is_the_new_name_and_manager_config_still_works_with_a_warning(
    user_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    core = _file(tmp_path, "core.yaml", "heartbeat_period: 15\ndisplay_name: from-file\n")
    assert main(["configure", *CORE, "--core-config", core, "new"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    data = _config(user_dir, "new")
    assert data["heartbeat_period"] == 15 and data["display_name"] == "from-file"
    assert data["email"] == "ops@example.org"
    assert main(["configure", *CORE, "--manager-config", core, "old"]) == 0
    assert "--manager-config is deprecated; use --core-config" in capsys.readouterr().err
    assert _config(user_dir, "old")["heartbeat_period"] == 15
    other = _file(tmp_path, "other.yaml", "heartbeat_period: 20\n")
    args = ["--core-config", other, "--manager-config", core, "--display-name", "DN"]
    assert main(["configure", *CORE, *args, "both"]) == 0
    assert "--manager-config (deprecated) is ignored" in capsys.readouterr().err
    data = _config(user_dir, "both")
    assert data["heartbeat_period"] == 20 and data["display_name"] == "DN"


def test_a_core_config_without_engine_makes_a_core_endpoint_by_itself(
    user_dir: Path, tmp_path: Path
) -> None:
    core = _file(tmp_path, "core.yaml", "email: admin@example.org\n")
    assert main(["configure", "--core-config", core, "implied"]) == 0
    cfg, _, _ = load_endpoint_dir(user_dir / "implied")
    assert isinstance(cfg, ManagerConfig) and cfg.email == "admin@example.org"
    assert (user_dir / "implied" / "user_config_template.yaml.j2").exists()


def test_a_core_config_without_engine_contradicts_multi_user_false(
    user_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    core = _file(tmp_path, "core.yaml", "email: admin@example.org\n")
    assert main(["configure", "--multi-user", "false", "--core-config", core, "x"]) == EX_FAILURE
    assert "drop --multi-user false" in capsys.readouterr().err
    assert not (user_dir / "x").exists()


def test_a_core_config_with_engine_is_a_single_user_endpoint_unless_told_otherwise(
    user_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = _file(tmp_path, "plain.yaml", "engine:\n  type: ThreadPoolEngine\n  max_workers: 3\n")
    assert main(["configure", "--core-config", plain, "single"]) == 0
    cfg, _, _ = load_endpoint_dir(user_dir / "single")
    assert isinstance(cfg, EndpointConfig) and cfg.engine.max_workers == 3  # type: ignore[union-attr]
    assert main(["configure", *CORE, "--core-config", plain, "refused"]) == EX_FAILURE
    assert "must not have an engine: block" in capsys.readouterr().err
    assert not (user_dir / "refused").exists()


def test_an_invalid_core_config_is_refused_and_leaves_nothing(
    user_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _file(tmp_path, "bad.yaml", "heartbeat_perod: 3\n")
    assert main(["configure", *CORE, "--core-config", bad, "bad"]) == EX_CONFIG
    assert "heartbeat_perod" in capsys.readouterr().err
    assert not (user_dir / "bad").exists()
    assert main(["configure", *CORE, "--core-config", str(tmp_path / "none.yaml"), "x"]) == (
        EX_CONFIG
    )
    assert "cannot read" in capsys.readouterr().err


# ---- the user endpoint files -----------------------------------------------------------------


def test_template_schema_environment_and_mapping_files_are_copied(
    user_dir: Path, tmp_path: Path
) -> None:
    template = "engine:\n  type: ThreadPoolEngine\n  max_workers: {{ workers|default(1) }}\n"
    schema = {"type": "object", "properties": {"workers": {"type": "integer"}}}
    mapping = [{"DATA_TYPE": "expression_identity_mapping#1.0.0", "mappings": []}]
    args = [
        "--template-config", _file(tmp_path, "t.j2", template),
        "--schema-config", _file(tmp_path, "s.json", json.dumps(schema)),
        "--user-env-config", _file(tmp_path, "e.yaml", "SCRATCH: /scratch\n"),
        "--id-mapping-config", _file(tmp_path, "m.json", json.dumps(mapping)),
    ]  # fmt: skip
    assert main(["configure", *CORE, *args, "files"]) == 0
    ep = user_dir / "files"
    assert (ep / "user_config_template.yaml.j2").read_text() == template
    assert json.loads((ep / "user_config_schema.json").read_text()) == schema
    assert (ep / "user_environment.yaml").read_text() == "SCRATCH: /scratch\n"
    assert json.loads((ep / "identity_mapping_config.json").read_text()) == mapping
    assert not (ep / "example_identity_mapping_config.json").exists()
    assert {oct(p.stat().st_mode & 0o777) for p in ep.iterdir() if p.suffix != ".j2"} == {"0o600"}
    cfg, _, _ = load_endpoint_dir(ep)
    assert isinstance(cfg, ManagerConfig)
    assert cfg.identity_mapping_config_path == ep / "identity_mapping_config.json"


def test_user_endpoint_files_need_a_core_endpoint(
    user_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = _file(tmp_path, "m.json", "[]")
    assert main(["configure", "--id-mapping-config", mapping, "plain"]) == EX_FAILURE
    assert "--id-mapping-config only apply to a core" in capsys.readouterr().err
    assert not (user_dir / "plain").exists()


@pytest.mark.parametrize(
    ("flag", "text", "message"),
    [
        ("--schema-config", "{not json", "not valid JSON at line 1"),
        ("--schema-config", "[1]", "must be a JSON object"),
        ("--schema-config", '{"type": 5}', "not a valid JSON Schema at type"),
        ("--user-env-config", "A: [1, 2]\n", "'A' must be a variable name with a plain value"),
        ("--user-env-config", "- a\n", "the top level must be a mapping"),
        ("--id-mapping-config", '"text"', "must be a JSON list or object"),
    ],
)
def test_a_bad_override_file_is_named_with_its_problem(
    user_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    text: str,
    message: str,
) -> None:
    path = _file(tmp_path, "f", text)
    assert main(["configure", *CORE, flag, path, "bad"]) == EX_CONFIG
    err = capsys.readouterr().err
    assert message in err and path in err
    assert not (user_dir / "bad").exists()


def test_an_override_must_be_a_small_regular_file(
    user_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block forever
    assert main(["configure", *CORE, "--template-config", str(fifo), "f"]) == EX_CONFIG
    assert "not a regular file" in capsys.readouterr().err
    big = _file(tmp_path, "big", "#" * (MAX_OVERRIDE_BYTES + 1))
    assert main(["configure", *CORE, "--template-config", big, "f"]) == EX_CONFIG
    assert f"larger than {MAX_OVERRIDE_BYTES} bytes" in capsys.readouterr().err
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe")
    assert main(["configure", *CORE, "--template-config", str(binary), "f"]) == EX_CONFIG
    assert "not UTF-8" in capsys.readouterr().err
    assert not (user_dir / "f").exists()


# ---- authentication policies, high assurance, compatibility flags -----------------------------


def test_an_existing_auth_policy_is_written_and_sent(user_dir: Path) -> None:
    assert main(["configure", "--auth-policy", POLICY, "--display-name", "D", "pol"]) == 0
    assert _config(user_dir, "pol")["authentication_policy"] == POLICY


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--auth-policy", POLICY, "--allowed-domains", "example.org"],
            "Cannot specify an existing auth policy (--auth-policy) and create a new one",
        ),
        (["--auth-policy-mfa-required"], "may only be given when creating a policy"),
        (
            ["--allowed-domains", "x.org", "--auth-policy-mfa-required"],
            "MFA may only be required by High-Assurance",
        ),
        (["--high-assurance"], "High-Assurance endpoints are not supported"),
        # Creating a policy: tests/unit/test_configure_policy.py.
    ],
)
def test_policy_options_follow_the_official_rules_then_say_what_to_do(
    user_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["configure", *args, "p"]) == EX_FAILURE
    assert message in capsys.readouterr().err
    assert not (user_dir / "p").exists()


def test_policy_values_are_checked_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["configure", "--auth-timeout", "-1", "p"])
    assert done.value.code == EX_USAGE
    assert "must be 0 or more" in capsys.readouterr().err


def test_the_official_common_flags_are_accepted(user_dir: Path) -> None:
    assert main(["configure", "--no-color", "--log-to-console", "flags"]) == 0
    assert (user_dir / "flags" / "config.yaml").exists()
