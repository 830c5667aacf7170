"""Benchmark instrumentation: per-task times measured at the service.

The SDK matches results to futures only every 0.5 s, so end-to-end latency is measured here:
from the submit reaching its handler to the result's republish being confirmed.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from webservice.api.tasks import owned_group_id
from webservice.context import Services, get_services
from webservice.security import CallerDep

router = APIRouter()


@router.get("/v2/_bench/task_timings")
async def task_timings(
    task_group_id: uuid.UUID,
    caller: CallerDep,
    services: Annotated[Services, Depends(get_services)],
) -> JSONResponse:
    tg = owned_group_id(task_group_id, caller, services)
    return JSONResponse({"tasks": services.store.tasks.timings(tg)})
