"""Authentication policies (Globus Auth's policy API shape), owned by the identity that made them.

A policy constrains who may use an endpoint that names it (`authentication_policy` at
registration): the domain of the caller's username must match an include pattern when the
include list is set, and no exclude pattern; a timeout bounds how long ago the caller logged in.
"""

from __future__ import annotations

import fnmatch
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from webservice.db import Database


@dataclass(frozen=True)
class Policy:
    policy_id: str
    owner: str
    project_id: str | None
    display_name: str
    description: str
    high_assurance: bool = False
    authentication_assurance_timeout: int | None = None
    required_mfa: bool = False
    domain_constraints_include: list[str] | None = None
    domain_constraints_exclude: list[str] | None = None
    created: float = field(default_factory=time.time)

    def to_api(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["id"] = doc.pop("policy_id")
        del doc["owner"], doc["created"]
        return doc

    def domain_refusal(self, username: str) -> str | None:
        """Why `username` does not comply with the domain constraints (None: it does)."""
        domain = username.rpartition("@")[2].lower()
        if not domain:
            return f"the username {username!r} has no domain"
        include = self.domain_constraints_include
        if include is not None and not _matches(domain, include):
            return f"the domain {domain!r} is not one the policy includes"
        if _matches(domain, self.domain_constraints_exclude or []):
            return f"the domain {domain!r} is excluded by the policy"
        return None


def _matches(domain: str, patterns: list[str]) -> bool:
    # fnmatchcase on lower-cased text: domains are case-insensitive, and `[` is refused at the
    # API (patterns are `[A-Za-z0-9.*-]`), so only `*` is special.
    return any(fnmatch.fnmatchcase(domain, p.lower()) for p in patterns)


def new_policy_id() -> str:
    return str(uuid.uuid4())


def _policy(row: Any) -> Policy:
    return Policy(
        policy_id=row["policy_id"],
        owner=row["owner"],
        project_id=row["project_id"],
        display_name=row["display_name"],
        description=row["description"],
        high_assurance=bool(row["high_assurance"]),
        authentication_assurance_timeout=row["authentication_assurance_timeout"],
        required_mfa=bool(row["required_mfa"]),
        domain_constraints_include=_list(row["domain_constraints_include"]),
        domain_constraints_exclude=_list(row["domain_constraints_exclude"]),
        created=row["created"],
    )


def _list(text: str | None) -> list[str] | None:
    return None if text is None else list(json.loads(text))


def _json(value: list[str] | None) -> str | None:
    return None if value is None else json.dumps(value)


class PolicyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, policy_id: str) -> Policy | None:
        row = self._db.conn.execute(
            "SELECT * FROM policies WHERE policy_id=?", (policy_id,)
        ).fetchone()
        return _policy(row) if row else None

    def save(self, p: Policy) -> None:
        """Create or replace (the owner and creation time stay those of the first save)."""
        with self._db.tx() as c:
            c.execute(
                "INSERT INTO policies (policy_id, owner, project_id, display_name, description,"
                " high_assurance, authentication_assurance_timeout, required_mfa,"
                " domain_constraints_include, domain_constraints_exclude, created)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (policy_id) DO UPDATE SET project_id=excluded.project_id,"
                " display_name=excluded.display_name, description=excluded.description,"
                " high_assurance=excluded.high_assurance,"
                " authentication_assurance_timeout=excluded.authentication_assurance_timeout,"
                " required_mfa=excluded.required_mfa,"
                " domain_constraints_include=excluded.domain_constraints_include,"
                " domain_constraints_exclude=excluded.domain_constraints_exclude",
                (
                    p.policy_id,
                    p.owner,
                    p.project_id,
                    p.display_name,
                    p.description,
                    int(p.high_assurance),
                    p.authentication_assurance_timeout,
                    int(p.required_mfa),
                    _json(p.domain_constraints_include),
                    _json(p.domain_constraints_exclude),
                    p.created,
                ),
            )

    def delete(self, policy_id: str) -> None:
        with self._db.tx() as c:
            c.execute("DELETE FROM policies WHERE policy_id=?", (policy_id,))
