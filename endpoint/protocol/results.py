"""Building Result messages the endpoint itself produces (errors decided outside a worker)."""

from __future__ import annotations

import platform
from typing import Any

import dill

from endpoint.protocol.messages import (
    ACTOR_INTERCHANGE,
    STATE_EXEC_END,
    Result,
    pack,
    transition,
)

#: The SDK compares these with its own and warns on a mismatch; we speak SDK 4.19's protocol.
SDK_PROTOCOL_VERSION = "4.19.0"


def env_details(endpoint_id: str) -> dict[str, Any]:
    """The `details` block of every Result (the SDK checks python/dill versions against it)."""
    return {
        "os": platform.platform(),
        "dill_version": dill.__version__,
        "python_version": platform.python_version(),
        "globus_compute_sdk_version": SDK_PROTOCOL_VERSION,
        "endpoint_id": endpoint_id,
    }


def error_result(task_id: str, code: str, message: str, endpoint_id: str) -> bytes:
    """A packed failure Result whose text the SDK shows in TaskExecutionFailed."""
    return pack(
        Result(
            task_id=task_id,
            data=message,
            details=env_details(endpoint_id),
            error_details={"code": code, "user_message": message},
            task_statuses=[transition(STATE_EXEC_END, ACTOR_INTERCHANGE)],
        )
    )
