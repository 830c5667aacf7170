"""`POST /v3/endpoints/{id}/submit`: the throughput hot path (see `dispatch.py`)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from webservice.context import Services, get_services
from webservice.models import SubmitIn
from webservice.security import CallerDep

router = APIRouter()


@router.post("/v3/endpoints/{endpoint_id}/submit")
async def submit(
    endpoint_id: uuid.UUID,
    body: SubmitIn,
    caller: CallerDep,
    services: Annotated[Services, Depends(get_services)],
) -> JSONResponse:
    received_ns = time.time_ns()
    reply = await services.dispatcher.submit(caller, str(endpoint_id), body, received_ns)
    # A JSONResponse skips FastAPI's recursive encoder: thousands of ids per batch.
    return JSONResponse(reply)
