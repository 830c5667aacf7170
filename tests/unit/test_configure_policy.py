"""`configure` creating an authentication policy: the document POSTed, the id written, and
nothing written (or the policy deleted again) when a step fails. The service is a fake here;
tests/integration/test_auth_policies.py runs it against the real one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from endpoint.admin import configure, policies
from endpoint.cli.app import main
from endpoint.cli.exits import EX_DATAERR
from endpoint.cli.policy import DEFAULT_POLICY_DESCRIPTION, DEFAULT_POLICY_NAME
from endpoint.errors import ServiceError

POLICY_ID = "0b6c3d52-8f1e-4b4a-9a57-2f3c5d7e9a11"
PROJECT = "5a2b3c4d-1111-4222-8333-944455556666"


class FakeService:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    def create_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise ServiceError("create authentication policy refused (400): bad domain", 400)
        self.created.append(policy)
        return {"id": POLICY_ID, **policy}

    def delete_policy(self, policy_id: str) -> None:
        self.deleted.append(policy_id)


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "u"))
    monkeypatch.setattr(configure, "is_privileged", lambda: False)
    return tmp_path / "u"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeService:
    service = FakeService()
    monkeypatch.setattr(policies, "_default_service", lambda _prompt: service)
    return service


def _config(user_dir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((user_dir / name / "config.yaml").read_text())
    return data


def test_the_policy_is_created_and_its_id_written(
    user_dir: Path, fake: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--allowed-domains", "example.org, *.edu", "--excluded-domains", "evil.edu"]
    args += ["--auth-timeout", "60", "--auth-policy-project-id", PROJECT]
    assert main(["configure", *args, "p"]) == 0
    assert fake.created == [
        {
            "display_name": DEFAULT_POLICY_NAME,
            "description": DEFAULT_POLICY_DESCRIPTION,
            "high_assurance": False,
            "required_mfa": False,
            "authentication_assurance_timeout": 60,
            "domain_constraints_include": ["example.org", "*.edu"],
            "domain_constraints_exclude": ["evil.edu"],
            "project_id": PROJECT,
        }
    ]
    assert _config(user_dir, "p")["authentication_policy"] == POLICY_ID
    assert f"Created authentication policy {POLICY_ID}" in capsys.readouterr().out


def test_names_are_sent_and_unset_lists_stay_null(user_dir: Path, fake: FakeService) -> None:
    args = ["--auth-policy-display-name", "N", "--auth-policy-description", "D"]
    assert main(["configure", *args, "p"]) == 0
    sent = fake.created[0]
    assert (sent["display_name"], sent["description"]) == ("N", "D")
    assert sent["domain_constraints_include"] is None
    assert sent["domain_constraints_exclude"] is None
    assert "project_id" not in sent


def test_a_refused_creation_writes_nothing(
    user_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(policies, "_default_service", lambda _prompt: FakeService(fail=True))
    assert main(["configure", "--allowed-domains", "x.org", "p"]) == EX_DATAERR
    assert "bad domain" in capsys.readouterr().err
    assert not (user_dir / "p").exists()


def test_a_failed_write_deletes_the_policy_again(
    user_dir: Path, fake: FakeService, tmp_path: Path
) -> None:
    bad = tmp_path / "core.yaml"
    bad.write_text("engine:\n  type: NoSuchEngine\n")
    args = ["--allowed-domains", "x.org", "--core-config", str(bad), "--multi-user", "false"]
    assert main(["configure", *args, "p"]) != 0
    assert fake.deleted == [POLICY_ID]
    assert not (user_dir / "p").exists()


def test_an_existing_endpoint_creates_no_policy(user_dir: Path, fake: FakeService) -> None:
    assert main(["configure", "p"]) == 0
    assert main(["configure", "--allowed-domains", "x.org", "p"]) != 0
    assert fake.created == []


def test_no_creation_flags_make_no_service_call(user_dir: Path, fake: FakeService) -> None:
    assert main(["configure", "p"]) == 0
    assert fake.created == [] and "authentication_policy" not in _config(user_dir, "p")
