"""`configure`'s authentication policy options (official 4.19 names and rules).

`--auth-policy UUID` names an existing policy: it is written to config.yaml as
`authentication_policy` and sent when the endpoint registers. The other options ask
`configure` to *create* a policy first, at the service's policy API (Globus Auth's shape,
`POST /v2/api/policies`; see endpoint/admin/policies.py), and write the id it answers.
There is no project API: `--auth-policy-project-id` is stored with the policy as given.
"""

from __future__ import annotations

import argparse
import uuid
from dataclasses import dataclass
from typing import Any

from endpoint.errors import LifecycleError

#: The official defaults, shown in `--help`.
DEFAULT_POLICY_NAME = "Globus Compute Authentication Policy"
DEFAULT_POLICY_DESCRIPTION = "This policy was created automatically by Globus Compute."

HIGH_ASSURANCE = (
    "High-Assurance endpoints are not supported: they must keep a per-task audit log, which "
    "this endpoint does not implement (configure without --high-assurance)"
)


@dataclass(frozen=True)
class PolicyRequest:
    auth_policy: str | None = None
    high_assurance: bool = False
    project_id: str | None = None
    display_name: str | None = None
    description: str | None = None
    mfa_required: bool = False
    allowed_domains: str | None = None
    excluded_domains: str | None = None
    auth_timeout: int | None = None

    @property
    def creation_flags(self) -> list[str]:
        """The policy-creation options given (`--auth-policy-mfa-required` is not one)."""
        given = {
            "--auth-policy-project-id": self.project_id,
            "--auth-policy-display-name": self.display_name,
            "--auth-policy-description": self.description,
            "--allowed-domains": self.allowed_domains,
            "--excluded-domains": self.excluded_domains,
            "--auth-timeout": self.auth_timeout,
        }
        return [flag for flag, value in given.items() if value is not None]


def check(req: PolicyRequest) -> None:
    """The official rules (so a script learns the same thing as upstream would tell it),
    then what this service cannot do (High-Assurance)."""
    creating = req.creation_flags
    if creating and req.auth_policy:
        raise LifecycleError(
            "Cannot specify an existing auth policy (--auth-policy) and create a new one "
            f"({', '.join(creating)}) at the same time"
        )
    if req.mfa_required and not creating:
        raise LifecycleError("--auth-policy-mfa-required may only be given when creating a policy")
    if req.mfa_required and not req.high_assurance:
        raise LifecycleError("MFA may only be required by High-Assurance (HA) policies")
    if req.high_assurance:
        raise LifecycleError(HIGH_ASSURANCE)


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auth-policy",
        type=_uuid,
        metavar="UUID",
        help="an existing Globus Auth policy that users are evaluated against (sent when the "
        "endpoint registers)",
    )
    group = parser.add_argument_group(
        "authentication policy creation",
        "create an authentication policy at the service (with the same credentials as "
        "`start`) and write its id as authentication_policy; nothing is written if that fails",
    )
    group.add_argument("--auth-policy-project-id", type=_uuid, metavar="UUID")
    group.add_argument(
        "--auth-policy-display-name", metavar="TEXT", help=f"(default: {DEFAULT_POLICY_NAME})"
    )
    group.add_argument(
        "--auth-policy-description", metavar="TEXT", help=f"(default: {DEFAULT_POLICY_DESCRIPTION})"
    )
    group.add_argument(
        "--auth-policy-mfa-required",
        action="store_true",
        help="require multi-factor authentication (High-Assurance only)",
    )
    group.add_argument("--allowed-domains", metavar="LIST", help="e.g. globus.org,*.edu")
    group.add_argument("--excluded-domains", metavar="LIST", help="e.g. example.com")
    group.add_argument(
        "--auth-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="how old a login may be and still comply (>= 0)",
    )


def from_args(args: argparse.Namespace) -> PolicyRequest:
    return PolicyRequest(
        auth_policy=args.auth_policy,
        high_assurance=args.high_assurance,
        project_id=args.auth_policy_project_id,
        display_name=args.auth_policy_display_name,
        description=args.auth_policy_description,
        mfa_required=args.auth_policy_mfa_required,
        allowed_domains=args.allowed_domains,
        excluded_domains=args.excluded_domains,
        auth_timeout=args.auth_timeout,
    )


def _domains(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [d.strip() for d in text.split(",") if d.strip()]


def document(req: PolicyRequest) -> dict[str, Any] | None:
    """The policy to create, as Globus Auth's API takes it (None: no creation flag given)."""
    if not req.creation_flags:
        return None
    doc: dict[str, Any] = {
        "display_name": req.display_name or DEFAULT_POLICY_NAME,
        "description": req.description or DEFAULT_POLICY_DESCRIPTION,
        "high_assurance": req.high_assurance,
        "required_mfa": req.mfa_required,
        "authentication_assurance_timeout": req.auth_timeout,
        "domain_constraints_include": _domains(req.allowed_domains),
        "domain_constraints_exclude": _domains(req.excluded_domains),
    }
    if req.project_id:
        doc["project_id"] = req.project_id
    return doc
