"""`POST /v3/endpoints/{id}/submit`: the throughput hot path (see `dispatch.py`).

Its body is capped before it is read (`edge.py`, `Limits.submit_body_bytes`) and refused as
413 TASK_PAYLOAD_TOO_LARGE, like a submission over the limit found once parsed: the SDK
raises either as a `GlobusAPIError` and does not retry it.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from webservice.context import Services, get_services
from webservice.models import SubmitIn
from webservice.security import CallerDep

router = APIRouter()

SUBMIT_PATH = "/v3/endpoints/{endpoint_id}/submit"
_SUBMIT_PATH = re.compile(r"/v3/endpoints/[^/]+/submit")


def is_submit_path(path: str) -> bool:
    """Whether a request for ``path`` reaches the submit route (for the edge's body cap)."""
    return _SUBMIT_PATH.fullmatch(path) is not None


@router.post(SUBMIT_PATH)
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
