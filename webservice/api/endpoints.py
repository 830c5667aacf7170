"""Endpoint registration, lookup, status, lock and deletion."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends

from webservice.context import Services, get_services
from webservice.errors import BadRequest, Conflict, Forbidden, Locked, NotFound
from webservice.liveness import status_doc
from webservice.models import EndpointIn, canonical_uuid
from webservice.security import Caller, CallerDep
from webservice.store.endpoints import MANAGER, SINGLE_USER, Endpoint

log = logging.getLogger(__name__)
router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]

#: The registration metadata key and value by which our own endpoint says it runs tasks itself
#: (it consumes `task_queue_info.queue`); every other endpoint is treated as a manager.
ENDPOINT_MODE_KEY = "endpoint_mode"
DELETED_CODE = "EndpointDeleted"


def _owned(services: Services, caller: Caller, endpoint_id: uuid.UUID) -> Endpoint:
    endpoint = services.store.endpoints.get(str(endpoint_id))
    if endpoint is None:
        raise NotFound(f"endpoint {endpoint_id} not found")
    if endpoint.owner != caller.identity:
        raise Forbidden(f"endpoint {endpoint_id} is not yours")
    return endpoint


def _check_policy(services: Services, caller: Caller, body: EndpointIn) -> None:
    """An authentication_policy must be one of the registering identity's own policies:
    naming a foreign or made-up one would make the endpoint's access rule someone else's."""
    if body.authentication_policy is None:
        return
    try:
        policy_id = canonical_uuid(body.authentication_policy)
    except ValueError:
        raise BadRequest("authentication_policy is not a UUID") from None
    policy = services.store.policies.get(policy_id)
    if policy is None or policy.owner != caller.identity:
        raise BadRequest(
            f"authentication_policy {policy_id} is not a policy of yours; create one with "
            "POST /v2/api/policies (or `compute-endpoint configure --allowed-domains ...`)",
            code="INVALID_AUTHENTICATION_POLICY",
        )
    body.authentication_policy = policy_id


async def _register(
    services: Services, caller: Caller, endpoint_id: str, body: EndpointIn
) -> dict[str, Any]:
    deleted_by = services.store.endpoints.deleted_owner(endpoint_id)
    if deleted_by is not None and deleted_by != caller.identity:
        # Its old owner's users may still know the id: nobody else may take it over.
        raise Conflict(f"endpoint {endpoint_id} was deleted; register a new endpoint instead")
    existing = services.store.endpoints.get(endpoint_id)
    if existing is not None:
        if existing.owner != caller.identity:
            raise Forbidden(f"endpoint {endpoint_id} belongs to another identity")
        if existing.locked():
            raise Locked(f"endpoint {endpoint_id} is locked; registration refused until it expires")
    _check_policy(services, caller, body)
    single = body.metadata.get(ENDPOINT_MODE_KEY) == SINGLE_USER
    endpoint = Endpoint(
        endpoint_id=endpoint_id,
        owner=caller.identity,
        name=body.endpoint_name or (existing.name if existing else endpoint_id),
        display_name=body.display_name,
        mode=SINGLE_USER if single else MANAGER,
        public=body.public,
        allowed_functions=body.allowed_functions or [],
        registration=body.model_dump(mode="json"),
    )
    # Declared before the answer: the endpoint's first act is to use these queues.
    await services.topology.declare_endpoint(endpoint_id)
    # Every registration is a start: a new password, and the previous one stops working.
    url = await services.principals.endpoint_url(endpoint_id, rotate=True)
    services.store.endpoints.save(endpoint)
    log.info("endpoint %s registered by %s (%s)", endpoint_id, caller.identity, endpoint.mode)
    return {"endpoint_id": endpoint_id, **services.topology.names.queue_infos(endpoint_id, url)}


@router.post("/v3/endpoints")
async def register_endpoint(
    body: EndpointIn, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    return await _register(services, caller, str(uuid.uuid4()), body)


@router.put("/v3/endpoints/{endpoint_id}")
async def update_endpoint(
    endpoint_id: uuid.UUID, body: EndpointIn, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    return await _register(services, caller, str(endpoint_id), body)


@router.get("/v2/endpoints")
async def list_endpoints(
    caller: CallerDep, services: ServicesDep, role: Literal["owner", "any"] = "owner"
) -> list[dict[str, Any]]:
    found = services.store.endpoints.visible_to(caller.identity, include_public=role == "any")
    return [e.summary() for e in found]


@router.get("/v2/endpoints/{endpoint_id}")
async def get_endpoint(
    endpoint_id: uuid.UUID, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    endpoint = _owned(services, caller, endpoint_id)
    reg = endpoint.registration
    metadata = reg.get("metadata") or {}
    return {
        **endpoint.summary(),
        "endpoint_id": endpoint.endpoint_id,
        "metadata": metadata,
        "hostname": metadata.get("hostname"),
        "local_user": metadata.get("local_user"),
        "endpoint_version": metadata.get("endpoint_version"),
        "allowed_functions": endpoint.allowed_functions,
        "authentication_policy": reg.get("authentication_policy"),
        "subscription_uuid": reg.get("subscription_uuid"),
        "high_assurance": reg.get("high_assurance", False),
        "admins": reg.get("admins") or [],
        "locked": endpoint.locked(),
    }


@router.get("/v2/endpoints/{endpoint_id}/status")
async def endpoint_status(
    endpoint_id: uuid.UUID, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    eid = str(endpoint_id)
    uep = services.store.endpoints.get_uep(eid)
    # A user endpoint's status is its submitter's business; anything else, its owner's.
    if uep is None or uep.owner != caller.identity:
        _owned(services, caller, endpoint_id)
    hb = services.store.heartbeats.get(eid)
    return status_doc(hb, time.time(), services.settings.default_heartbeat_period_s)


@router.delete("/v2/endpoints/{endpoint_id}")
async def delete_endpoint(
    endpoint_id: uuid.UUID, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    endpoint = _owned(services, caller, endpoint_id)
    eid = endpoint.endpoint_id
    ueps = services.store.endpoints.uep_ids(eid)
    services.store.endpoints.delete(eid)
    # Its accounts (and its user endpoints') stop working now, connections included.
    await services.principals.revoke([eid, *ueps])
    await services.topology.delete_endpoint_queues(eid)
    # Nobody will ever answer these now: tell their submitters.
    waiting = services.store.tasks.pending_ids(endpoint_id=eid)
    await services.forwarder.fail_tasks(waiting, eid, DELETED_CODE, f"Endpoint {eid} was deleted")
    return {"endpoint_id": eid, "deleted": True}


@router.post("/v3/endpoints/{endpoint_id}/lock")
async def lock_endpoint(
    endpoint_id: uuid.UUID, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    endpoint = _owned(services, caller, endpoint_id)
    until = time.time() + services.settings.lock_ttl_s
    services.store.endpoints.lock(endpoint.endpoint_id, until)
    return {"endpoint_id": endpoint.endpoint_id, "locked": True, "locked_until": until}


@router.get("/v3/endpoints/{endpoint_id}/allowed_functions")
async def allowed_functions(
    endpoint_id: uuid.UUID, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    endpoint = services.store.endpoints.get(str(endpoint_id))
    if endpoint is None:
        raise NotFound(f"endpoint {endpoint_id} not found")
    # Submitters of a public endpoint need to know what it accepts.
    if endpoint.owner != caller.identity and not endpoint.public:
        raise Forbidden(f"endpoint {endpoint_id} is not yours and not public")
    return {"endpoint_id": endpoint.endpoint_id, "functions": endpoint.allowed_functions}
