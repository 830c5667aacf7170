"""Who may start a user endpoint on a manager, and as which local user (features.md §5.3, §2.7).

Two modes, chosen at start:

* **owner** (not root, or root without an identity mapping file): a start command is obeyed
  only when its Globus identity set intersects the manager's own (from `userinfo`); the user
  endpoint runs as the manager's user.
* **mapping** (root with `identity_mapping_config_path`): the command's identities go through
  the mapping file (Globus Connect Server format: a JSON list of mappers, the first identity
  with a hit wins); the result must be an existing local user other than the manager's own.

The mapping file is re-read when it changes (checked at most every `RELOAD_EVERY_S`); a broken
new version is logged and the previous one stays in force.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from endpoint.errors import ConfigError, IdentityRefused

log = logging.getLogger(__name__)

EXPRESSION = "expression_identity_mapping#1.0.0"
EXTERNAL = "external_identity_mapping#1.0.0"
RELOAD_EVERY_S = 5.0
EXTERNAL_TIMEOUT_S = 10.0
_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    gecos: str
    shell: str
    home: str

    @classmethod
    def from_pw(cls, pw: pwd.struct_passwd) -> LocalUser:
        try:
            groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
        except OSError:
            groups = (pw.pw_gid,)
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_gecos, pw.pw_shell, pw.pw_dir)

    @classmethod
    def named(cls, name: str) -> LocalUser:
        try:
            return cls.from_pw(pwd.getpwnam(name))
        except KeyError:
            raise IdentityRefused(f"local user {name!r} does not exist") from None

    @classmethod
    def current(cls) -> LocalUser:
        return cls.from_pw(pwd.getpwuid(os.getuid()))


@dataclass(frozen=True)
class Principal:
    """The outcome of a successful check: run as `user`, on behalf of `identity_id`."""

    user: LocalUser
    identity_id: str
    candidates: tuple[str, ...] = ()

    def template_view(self) -> dict[str, Any]:
        """`_GC.mapped_identity` for the template."""
        u = self.user
        local = {
            "uname": u.name,
            "uid": u.uid,
            "gid": u.gid,
            "groups": list(u.groups),
            "gecos": u.gecos,
            "shell": u.shell,
            "dir": u.home,
        }
        return {"local": local, "globus": {"id": self.identity_id}}


def identities_of(
    identity_set: Sequence[Any], effective: str | None, username: str | None
) -> list[dict[str, Any]]:
    """The command's identity documents, each with an `id` (and the username we know)."""
    out = []
    for item in identity_set:
        if not isinstance(item, dict):
            continue
        ident = item.get("sub") or item.get("id")
        if not isinstance(ident, str) or not ident:
            continue
        doc = {**item, "id": ident, "sub": ident}
        if ident == effective and username and not doc.get("username"):
            doc["username"] = username
        out.append(doc)
    return out


class Authorizer(Protocol):
    def authorize(self, identities: list[dict[str, Any]]) -> Principal: ...


@dataclass
class OwnerAuthorizer:
    """The manager's own identities, and the manager's own user."""

    owner_ids: frozenset[str]
    user: LocalUser = field(default_factory=LocalUser.current)

    def authorize(self, identities: list[dict[str, Any]]) -> Principal:
        ids = [i["id"] for i in identities]
        matched = next((i for i in ids if i in self.owner_ids), None)
        if matched is None:
            raise IdentityRefused(
                f"untrusted identity: none of {ids or ['(none)']} is an identity of this "
                "endpoint's owner"
            )
        return Principal(self.user, matched, tuple(ids))


# ---- identity mapping ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExpressionRule:
    source: str
    match: re.Pattern[str]
    output: str

    def apply(self, identity: dict[str, Any]) -> str | None:
        try:
            text = _FIELD.sub(lambda m: str(identity[m.group(1)]), self.source)
        except KeyError:
            return None  # the identity lacks a field this rule reads
        hit = self.match.fullmatch(text)
        if hit is None:
            return None
        try:
            return self.output.format(*hit.groups())
        except (IndexError, KeyError):
            log.error("identity mapping output %r refers to a missing group", self.output)
            return None


def _expression_rule(i: int, m: Any) -> ExpressionRule:
    if not (isinstance(m, dict) and all(isinstance(m.get(k), str) for k in _RULE_KEYS)):
        raise ConfigError(f"mapping {i}: needs string `source`, `match` and `output`")
    pattern = re.escape(m["match"]) if m.get("literal") else m["match"]
    try:
        rx = re.compile(pattern, re.IGNORECASE if m.get("ignore_case") else 0)
    except re.error as e:
        raise ConfigError(f"mapping {i}: bad regular expression {pattern!r}: {e}") from e
    return ExpressionRule(m["source"], rx, m["output"])


_RULE_KEYS = ("source", "match", "output")


def _expression_mapper(doc: dict[str, Any]) -> list[ExpressionRule]:
    mappings = doc.get("mappings")
    if not isinstance(mappings, list) or not mappings:
        raise ConfigError("`mappings` must be a non-empty list")
    return [_expression_rule(i, m) for i, m in enumerate(mappings)]


@dataclass(frozen=True)
class Mapper:
    """One mapper of the file: expression rules, or an external command."""

    kind: str
    rules: tuple[ExpressionRule, ...] = ()
    command: tuple[str, ...] = ()

    def map(self, identity: dict[str, Any]) -> str | None:
        if self.kind == EXPRESSION:
            return next((out for r in self.rules if (out := r.apply(identity))), None)
        return _run_external(self.command, identity)


def _run_external(command: tuple[str, ...], identity: dict[str, Any]) -> str | None:
    request = {"DATA_TYPE": "identity_mapping_input#1.0.0", "identities": [identity]}
    try:
        proc = subprocess.run(
            list(command),
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=EXTERNAL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.error("identity mapping command %s failed: %s", command[0], e)
        return None
    if proc.returncode != 0:
        log.error("identity mapping command %s exited %s", command[0], proc.returncode)
        return None
    try:
        results = json.loads(proc.stdout).get("result") or []
    except (ValueError, AttributeError):
        log.error("identity mapping command %s printed no JSON document", command[0])
        return None
    for r in results:
        if isinstance(r, dict) and r.get("id") == identity["id"] and r.get("output"):
            return str(r["output"])
    return None


def parse_mapping(text: str, source: str) -> list[Mapper]:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{source}: not valid JSON: {e}") from e
    docs = doc if isinstance(doc, list) else [doc]
    mappers = []
    for i, d in enumerate(docs):
        kind = d.get("DATA_TYPE") if isinstance(d, dict) else None
        try:
            if kind == EXPRESSION:
                mappers.append(Mapper(kind, tuple(_expression_mapper(d))))
            elif kind == EXTERNAL:
                cmd = d.get("command")
                if not (isinstance(cmd, list) and cmd and all(isinstance(c, str) for c in cmd)):
                    raise ConfigError("`command` must be a non-empty list of strings")
                mappers.append(Mapper(kind, command=tuple(cmd)))
            else:
                raise ConfigError(f"unknown DATA_TYPE {kind!r} (use {EXPRESSION} or {EXTERNAL})")
        except ConfigError as e:
            raise ConfigError(f"{source}: mapper {i}: {e}") from None
    return mappers


class MappingFile:
    """The identity mapping file, re-read when it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature = self._stat()
        self.mappers = parse_mapping(self._read(), str(path))
        self._checked = time.monotonic()

    def _read(self) -> str:
        try:
            return self.path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read identity mapping {self.path}: {e.strerror}") from e

    def _stat(self) -> tuple[int, ...]:
        try:
            st = self.path.stat()
        except OSError:
            return ()
        return (st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size)

    def current(self) -> list[Mapper]:
        now = time.monotonic()
        if now - self._checked >= RELOAD_EVERY_S:
            self._checked = now
            signature = self._stat()
            if signature and signature != self._signature:
                self._signature = signature
                try:
                    self.mappers = parse_mapping(self._read(), str(self.path))
                    log.info("reloaded identity mapping %s", self.path)
                except ConfigError as e:
                    log.error("keeping the previous identity mapping: %s", e)
        return self.mappers


@dataclass
class MappingAuthorizer:
    mapping: MappingFile
    manager_uid: int = field(default_factory=os.getuid)

    def authorize(self, identities: list[dict[str, Any]]) -> Principal:
        ids = tuple(i["id"] for i in identities)
        for identity in identities:
            for mapper in self.mapping.current():
                name = mapper.map(identity)
                if name:
                    return self._principal(name, identity["id"], ids)
        raise IdentityRefused(f"identity failed to map to a local user name: {list(ids)}")

    def _principal(self, name: str, identity_id: str, ids: tuple[str, ...]) -> Principal:
        user = LocalUser.named(name)
        if user.uid == self.manager_uid:
            # A privileged manager never runs user code as itself.
            raise IdentityRefused(
                f"identity {identity_id} maps to {name!r}, the manager's own user; refused"
            )
        return Principal(user, identity_id, ids)
