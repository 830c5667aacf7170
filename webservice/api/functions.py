"""Function registration and lookup."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from webservice.context import Services, get_services
from webservice.errors import Forbidden, NotFound
from webservice.models import FunctionIn
from webservice.security import Caller, CallerDep
from webservice.store.functions import Function

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]


def frame_source(name: str, source: str) -> str:
    """Wrap plain source text (`serialized: false`) the way the SDK frames serialized code.

    The SDK's "st" strategy is `name:source` behind a 3-character header, and every
    function_code is a one-buffer `<len>\\n<buffer>` frame whose length counts characters.
    """
    buffer = f"st\n{name}:{source}"
    return f"{len(buffer)}\n{buffer}"


@router.post("/v3/functions")
async def register_function(
    body: FunctionIn, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    code = body.function_code
    if not body.serialized:
        code = frame_source(body.function_name, code)
    fn = Function(
        function_id=str(uuid.uuid4()),
        owner=caller.identity,
        name=body.function_name,
        code=code,
        description=body.description,
        meta=body.meta,
        public=body.public,
        group_id=body.group,
    )
    services.store.functions.add(fn)
    return {"function_uuid": fn.function_id}


def _function(services: Services, function_id: uuid.UUID) -> Function:
    fn = services.store.functions.get(str(function_id))
    if fn is None:
        raise NotFound(f"function {function_id} not found")
    return fn


@router.get("/v2/functions/{function_id}")
async def get_function(
    function_id: uuid.UUID, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    fn = _function(services, function_id)
    if not fn.visible_to(caller.identity):
        raise Forbidden(f"function {function_id} is not yours and not public")
    return fn.to_api()


@router.delete("/v2/functions/{function_id}")
async def delete_function(
    function_id: uuid.UUID, caller: CallerDep, services: ServicesDep
) -> dict[str, Any]:
    fn = _function(services, function_id)
    _require_owner(fn, caller)
    services.store.functions.delete(fn.function_id)
    return {"function_uuid": fn.function_id, "deleted": True}


def _require_owner(fn: Function, caller: Caller) -> None:
    if fn.owner != caller.identity:
        raise Forbidden(f"function {fn.function_id} is not yours")
