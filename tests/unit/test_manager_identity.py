"""Who may start user endpoints: owner identities, and identity mapping as root."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from endpoint.errors import ConfigError, IdentityRefused
from endpoint.manager import identity
from endpoint.manager.identity import (
    EXPRESSION,
    EXTERNAL,
    LocalUser,
    MappingAuthorizer,
    MappingFile,
    OwnerAuthorizer,
    identities_of,
    parse_mapping,
)

A, B = "aaaaaaaa-0000-0000-0000-000000000001", "bbbbbbbb-0000-0000-0000-000000000002"
ME = LocalUser.current()


def ident(sub: str, **extra: Any) -> dict[str, Any]:
    return {"id": sub, "sub": sub, **extra}


def expression(*rules: dict[str, Any]) -> str:
    return json.dumps([{"DATA_TYPE": EXPRESSION, "mappings": list(rules)}])


def test_the_command_identities_get_ids_and_the_known_username() -> None:
    got = identities_of([{"sub": A}, {"id": B, "username": "b@x"}, "junk", {}], A, "a@x")
    assert got == [
        {"sub": A, "id": A, "username": "a@x"},
        {"id": B, "sub": B, "username": "b@x"},
    ]


def test_the_owner_mode_accepts_an_intersecting_identity_set() -> None:
    auth = OwnerAuthorizer(frozenset({B}))
    principal = auth.authorize([ident(A), ident(B)])
    assert principal.identity_id == B and principal.user == ME
    assert principal.candidates == (A, B)
    view = principal.template_view()
    assert view["local"]["uname"] == ME.name and view["globus"]["id"] == B


def test_the_owner_mode_refuses_strangers() -> None:
    with pytest.raises(IdentityRefused, match="untrusted identity"):
        OwnerAuthorizer(frozenset({B})).authorize([ident(A)])
    with pytest.raises(IdentityRefused, match="untrusted identity"):
        OwnerAuthorizer(frozenset({B})).authorize([])


def test_expression_rules_map_the_first_matching_identity() -> None:
    mappers = parse_mapping(
        expression(
            {"source": "{username}", "match": r"(.*)@example\.org", "output": "{0}"},
            {"source": "{id}", "match": B, "output": "bee"},
        ),
        "m.json",
    )
    (mapper,) = mappers
    assert mapper.map(ident(A, username="alice@example.org")) == "alice"
    assert mapper.map(ident(A, username="alice@example.org.evil")) is None  # anchored
    assert mapper.map(ident(B)) == "bee"
    assert mapper.map(ident(A)) is None  # no username: the first rule cannot apply


def test_expression_options_ignore_case_and_literal() -> None:
    (mapper,) = parse_mapping(
        expression(
            {"source": "{username}", "match": "ALICE@X", "output": "a", "ignore_case": True},
            {"source": "{username}", "match": "b.b@x", "output": "b", "literal": True},
        ),
        "m.json",
    )
    assert mapper.map(ident(A, username="alice@x")) == "a"
    assert mapper.map(ident(A, username="b.b@x")) == "b"
    assert mapper.map(ident(A, username="bob@x")) is None


@pytest.mark.parametrize(
    "doc, message",
    [
        ("{nope", "not valid JSON"),
        ('[{"DATA_TYPE": "other#1"}]', "unknown DATA_TYPE"),
        (json.dumps([{"DATA_TYPE": EXPRESSION, "mappings": []}]), "non-empty list"),
        (json.dumps([{"DATA_TYPE": EXPRESSION, "mappings": [{"source": "x"}]}]), "needs string"),
        (
            json.dumps(
                [
                    {
                        "DATA_TYPE": EXPRESSION,
                        "mappings": [{"source": "x", "match": "(", "output": ""}],
                    }
                ]
            ),
            "bad regular expression",
        ),
        (json.dumps([{"DATA_TYPE": EXTERNAL, "command": "x"}]), "list of strings"),
    ],
)
def test_bad_mapping_files_are_config_errors(doc: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_mapping(doc, "m.json")


def test_external_mappers_get_the_identity_on_stdin(tmp_path: Path) -> None:
    script = tmp_path / "mapper.py"
    script.write_text(
        "import json, sys\n"
        "doc = json.load(sys.stdin)\n"
        "out = [{'id': i['id'], 'output': i['username'].split('@')[0]}"
        " for i in doc['identities'] if i.get('username', '').endswith('@ext')]\n"
        "print(json.dumps({'DATA_TYPE': 'identity_mapping_output#1.0.0', 'result': out}))\n"
    )
    import sys

    (mapper,) = parse_mapping(
        json.dumps([{"DATA_TYPE": EXTERNAL, "command": [sys.executable, str(script)]}]), "m"
    )
    assert mapper.map(ident(A, username="carol@ext")) == "carol"
    assert mapper.map(ident(A, username="carol@int")) is None
    (failing,) = parse_mapping(json.dumps([{"DATA_TYPE": EXTERNAL, "command": ["false"]}]), "m")
    assert failing.map(ident(A, username="carol@ext")) is None


def test_the_mapping_file_is_reloaded_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity, "RELOAD_EVERY_S", 0.0)
    path = tmp_path / "map.json"
    path.write_text(expression({"source": "{id}", "match": A, "output": "first"}))
    mf = MappingFile(path)
    assert mf.current()[0].map(ident(A)) == "first"
    time.sleep(0.01)
    path.write_text(expression({"source": "{id}", "match": A, "output": "second!"}))
    assert mf.current()[0].map(ident(A)) == "second!"
    time.sleep(0.01)
    path.write_text("[broken")
    assert mf.current()[0].map(ident(A)) == "second!"  # the previous mapping stays


def test_a_mapped_identity_must_be_an_existing_other_user(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(
        expression(
            {"source": "{id}", "match": A, "output": ME.name},
            {"source": "{id}", "match": B, "output": "no-such-user-xyz"},
        )
    )
    auth = MappingAuthorizer(MappingFile(path), manager_uid=ME.uid)
    with pytest.raises(IdentityRefused, match="the manager's own user"):
        auth.authorize([ident(A)])
    with pytest.raises(IdentityRefused, match="does not exist"):
        auth.authorize([ident(B)])
    with pytest.raises(IdentityRefused, match="failed to map"):
        auth.authorize([ident("cccccccc-0000-0000-0000-000000000003")])
    other = MappingAuthorizer(MappingFile(path), manager_uid=ME.uid + 12345)
    principal = other.authorize([ident("x"), ident(A)])
    assert principal.user.name == ME.name and principal.identity_id == A


def test_local_users_carry_their_groups() -> None:
    me = LocalUser.named(ME.name)
    assert me.gid in me.groups and me.home == os.path.expanduser("~" + ME.name)
