"""Authentication policies, in the shape of Globus Auth's policy API (`/v2/api/policies`).

Only the identity that created a policy sees or changes it: to anyone else it does not exist
(404). An endpoint names one at registration (`authentication_policy`); the dispatcher
enforces it on every submit (`webservice/dispatch.py`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import Field, field_validator

from webservice.context import Services, get_services
from webservice.errors import BadRequest, Conflict, NotFound
from webservice.models import _Body, canonical_uuid
from webservice.security import Caller, CallerDep
from webservice.store.policies import Policy, new_policy_id

log = logging.getLogger(__name__)
router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]

MAX_DISPLAY_NAME = 128
MAX_DESCRIPTION = 1024
MAX_DOMAINS = 100
MAX_DOMAIN_LENGTH = 253
#: Seconds; about 68 years, so any value fits SQLite's and Python's integers comfortably.
MAX_TIMEOUT_S = 2**31 - 1
#: A domain or a pattern of one: `*` is the only wildcard (`*.edu`, `globus.org`).
DOMAIN_PATTERN = r"^[A-Za-z0-9.*-]+$"

HIGH_ASSURANCE_REFUSED = (
    "high_assurance policies are not supported: a High-Assurance endpoint must keep a per-task "
    "audit log, which this service does not"
)
MFA_NEEDS_HIGH_ASSURANCE = "required_mfa may only be set on a high_assurance policy"

DomainList = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=MAX_DOMAIN_LENGTH, pattern=DOMAIN_PATTERN)]],
    Field(max_length=MAX_DOMAINS),
]


class PolicyFields(_Body):
    """Every field optional: a PUT changes only those given; a POST needs the names."""

    project_id: str | None = None
    display_name: str | None = Field(default=None, min_length=1, max_length=MAX_DISPLAY_NAME)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)
    high_assurance: bool | None = None
    authentication_assurance_timeout: int | None = Field(default=None, ge=0, le=MAX_TIMEOUT_S)
    required_mfa: bool | None = None
    domain_constraints_include: DomainList | None = None
    domain_constraints_exclude: DomainList | None = None

    @field_validator("project_id")
    @classmethod
    def _project(cls, value: str | None) -> str | None:
        # There is no project API here: any UUID is kept as given (canonical form).
        return None if value is None else canonical_uuid(value)


class PolicyIn(_Body):
    policy: PolicyFields


def _check_rules(p: Policy) -> None:
    if p.high_assurance:
        raise BadRequest(HIGH_ASSURANCE_REFUSED, code="HIGH_ASSURANCE_UNSUPPORTED")
    if p.required_mfa and not p.high_assurance:
        raise BadRequest(MFA_NEEDS_HIGH_ASSURANCE)


def _owned(services: Services, caller: Caller, policy_id: uuid.UUID) -> Policy:
    policy = services.store.policies.get(str(policy_id))
    # Another identity's policy is reported exactly like a missing one.
    if policy is None or policy.owner != caller.identity:
        raise NotFound(f"policy {policy_id} not found")
    return policy


def _doc(policy: Policy) -> dict[str, Any]:
    return {"policy": policy.to_api()}


@router.post("/v2/api/policies")
async def create_policy(body: PolicyIn, caller: CallerDep, services: ServicesDep) -> dict[str, Any]:
    given = body.policy
    if given.display_name is None or given.description is None:
        raise BadRequest("a policy needs a display_name and a description")
    policy = Policy(
        policy_id=new_policy_id(),
        owner=caller.identity,
        project_id=given.project_id,
        display_name=given.display_name,
        description=given.description,
        high_assurance=bool(given.high_assurance),
        authentication_assurance_timeout=given.authentication_assurance_timeout,
        required_mfa=bool(given.required_mfa),
        domain_constraints_include=given.domain_constraints_include,
        domain_constraints_exclude=given.domain_constraints_exclude,
    )
    _check_rules(policy)
    services.store.policies.save(policy)
    log.info("policy %s created by %s", policy.policy_id, caller.identity)
    return _doc(policy)


@router.get("/v2/api/policies/{policy_id}")
async def get_policy(
    policy_id: uuid.UUID, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    return _doc(_owned(services, caller, policy_id))


@router.put("/v2/api/policies/{policy_id}")
async def update_policy(
    policy_id: uuid.UUID, body: PolicyIn, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    policy = _owned(services, caller, policy_id)
    # Only the fields sent change; an explicit null clears an optional one.
    changes = body.policy.model_dump(exclude_unset=True)
    for name in ("display_name", "description", "high_assurance", "required_mfa"):
        if name in changes and changes[name] is None:
            raise BadRequest(f"{name} cannot be null")
    updated = replace(policy, **changes)
    _check_rules(updated)
    services.store.policies.save(updated)
    return _doc(updated)


@router.delete("/v2/api/policies/{policy_id}")
async def delete_policy(
    policy_id: uuid.UUID, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    policy = _owned(services, caller, policy_id)
    users = services.store.endpoints.with_policy(policy.policy_id)
    if users:
        # Deleting it would leave those endpoints refusing every submit.
        raise Conflict(
            f"policy {policy.policy_id} is the authentication_policy of endpoint(s) "
            f"{', '.join(users[:5])}; register them without it first"
        )
    services.store.policies.delete(policy.policy_id)
    return _doc(policy)
