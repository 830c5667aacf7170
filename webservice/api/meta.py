"""`GET /v2/version`: the one route that needs no token (the SDK calls it before logging in)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from webservice import __version__
from webservice.settings import MIN_EP_VERSION, MIN_SDK_VERSION

router = APIRouter()


@router.get("/v2/version")
async def version(service: str | None = None) -> dict[str, Any]:
    # The SDK reads min_sdk_version and min_ep_version (KeyError without them), with or
    # without ?service=all; one answer fits both.
    return {
        "api": "1.0",
        "version": __version__,
        "min_sdk_version": MIN_SDK_VERSION,
        "min_ep_version": MIN_EP_VERSION,
    }
