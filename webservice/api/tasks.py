"""Task results over REST, task groups, and where the SDK picks its results up (AMQP)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from webservice.context import Services, get_services
from webservice.errors import Forbidden, NotFound
from webservice.models import BatchStatusIn
from webservice.security import Caller, CallerDep

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]


@router.get("/v2/tasks/{task_id}")
async def get_task(task_id: uuid.UUID, caller: CallerDep, services: ServicesDep) -> dict[str, Any]:
    task = services.store.tasks.get(str(task_id))
    if task is None:
        raise NotFound(f"task {task_id} not found")
    if task.owner != caller.identity:
        raise Forbidden(f"task {task_id} is not yours")
    return task.to_api()


@router.post("/v2/batch_status")
async def batch_status(
    body: BatchStatusIn, caller: CallerDep, services: ServicesDep
) -> JSONResponse:
    # Unknown and foreign ids are left out: the SDK skips ids missing from the answer.
    found = services.store.tasks.get_many(list(dict.fromkeys(body.task_ids)))
    results = {tid: t.to_api() for tid, t in found.items() if t.owner == caller.identity}
    return JSONResponse({"response": "batch", "results": results})


def owned_group_id(task_group_id: uuid.UUID, caller: Caller, services: Services) -> str:
    """The task group id as a string, after checking it exists and the caller owns it."""
    tg = str(task_group_id)
    group = services.store.tasks.get_group(tg)
    if group is None:
        raise NotFound(f"task group {tg} not found")
    if group.owner != caller.identity:
        raise Forbidden(f"task group {tg} is not yours")
    return tg


@router.get("/v2/taskgroup/{task_group_id}")
async def get_task_group(
    task_group_id: uuid.UUID, caller: CallerDep, services: ServicesDep
) -> JSONResponse:
    tg = owned_group_id(task_group_id, caller, services)
    ids = services.store.tasks.group_task_ids(tg)
    return JSONResponse({"taskgroup_id": tg, "tasks": [{"id": tid} for tid in ids]})


@router.get("/v2/get_amqp_result_connection_url")
async def result_connection_url(caller: CallerDep, services: ServicesDep) -> dict[str, Any]:
    # The client's own account: it may read its own task groups' result queues, nothing else.
    url = await services.principals.client_url(caller.identity)
    return {
        "connection_url": url,
        "queue_prefix": services.topology.names.result_prefix(caller.identity),
    }
