"""The `globus_compute_common.messagepack` v1 envelope, byte-compatible with the official packer.

A packed message is one version byte (0x01) followed by compact UTF-8 JSON
``{"message_type": ..., "data": {...}}``. Field order matters for byte equality with the
official producers, so each type lists its wire keys in the order they emit them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from endpoint.errors import ProtocolError

PROTOCOL_VERSION = b"\x01"

#: TaskTransition actors and states the official code knows; we accept any string on input.
ACTOR_WORKER = "worker"
ACTOR_INTERCHANGE = "interchange"
STATE_EXEC_START = "execution-start"
STATE_EXEC_END = "execution-end"


def transition(state: str, actor: str) -> dict[str, Any]:
    """A TaskTransition as its wire dict (timestamp in integer nanoseconds)."""
    return {"timestamp": time.time_ns(), "state": state, "actor": actor}


@dataclass
class Task:
    task_id: str
    task_buffer: str
    container_id: str | None = None
    container: dict[str, Any] | None = None

    message_type = "task"

    def to_wire(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "container_id": self.container_id,
            "container": self.container,
            "task_buffer": self.task_buffer,
        }


@dataclass
class Result:
    task_id: str
    data: str
    details: dict[str, Any] | None = None
    error_details: dict[str, str] | None = None
    task_statuses: list[dict[str, Any]] | None = None

    message_type = "result"

    @property
    def is_error(self) -> bool:
        return self.error_details is not None

    def to_wire(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "data": self.data,
            "details": self.details,
            "error_details": self.error_details,
            "task_statuses": self.task_statuses,
        }


@dataclass
class EPStatusReport:
    endpoint_id: str
    global_state: dict[str, Any] = field(default_factory=dict)
    task_statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    message_type = "ep_status_report"

    def to_wire(self) -> dict[str, Any]:
        return {
            "endpoint_id": self.endpoint_id,
            "global_state": self.global_state,
            "task_statuses": self.task_statuses,
        }


Message = Task | Result | EPStatusReport


# The official packer writes compact JSON with raw UTF-8, not \u escapes: match it byte for
# byte. One encoder for every message: json.dumps with options builds a new one per call.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def pack(msg: Message) -> bytes:
    """Serialize a message exactly as the official packer does."""
    doc = {"message_type": msg.message_type, "data": msg.to_wire()}
    return PROTOCOL_VERSION + _ENCODE(doc).encode()


def _uuid_str(value: Any, key: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError) as e:
        raise ProtocolError(f"field {key!r} is not a UUID: {value!r}") from e


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise ProtocolError(f"missing required field {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        raise ProtocolError(f"field {key!r} has type {type(value).__name__}")
    return value


def _optional(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise ProtocolError(f"field {key!r} has type {type(value).__name__}")
    return value


def _task(data: dict[str, Any]) -> Task:
    cid = data.get("container_id")
    return Task(
        task_id=_uuid_str(_require(data, "task_id", str), "task_id"),
        task_buffer=_require(data, "task_buffer", str),
        container_id=None if cid is None else _uuid_str(cid, "container_id"),
        container=_optional(data, "container", dict),
    )


def _result(data: dict[str, Any]) -> Result:
    err = _optional(data, "error_details", dict)
    if err is not None and not {"code", "user_message"} <= err.keys():
        raise ProtocolError("field 'error_details' needs 'code' and 'user_message'")
    return Result(
        task_id=_uuid_str(_require(data, "task_id", str), "task_id"),
        data=_require(data, "data", str),
        details=_optional(data, "details", dict),
        error_details=err,
        task_statuses=_optional(data, "task_statuses", list),
    )


def _status(data: dict[str, Any]) -> EPStatusReport:
    # Official consumers accept the older alias `ep_status_report` for `global_state`.
    state = data.get("global_state", data.get("ep_status_report"))
    if not isinstance(state, dict):
        raise ProtocolError("missing required field 'global_state'")
    return EPStatusReport(
        endpoint_id=_uuid_str(_require(data, "endpoint_id", str), "endpoint_id"),
        global_state=state,
        task_statuses=_optional(data, "task_statuses", dict) or {},
    )


_DECODERS: dict[str, Callable[[dict[str, Any]], Message]] = {
    "task": _task,
    "result": _result,
    "ep_status_report": _status,
}


def unpack(raw: bytes) -> Message:
    """Decode a packed message; every failure is a ProtocolError naming what was wrong."""
    if not raw:
        raise ProtocolError("empty message")
    if raw[:1] != PROTOCOL_VERSION:
        raise ProtocolError(f"unrecognized protocol version byte {raw[:1]!r}")
    try:
        doc = json.loads(raw[1:])
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"message body is not JSON: {e}") from e
    except RecursionError as e:  # a hostile producer's "[[[[...": refuse, do not crash
        raise ProtocolError("message body is JSON nested too deeply to decode") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise ProtocolError("message is not an object with a 'data' object")
    kind = doc.get("message_type")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise ProtocolError(f"unsupported message_type {kind!r}")
    return decoder(doc["data"])


M = TypeVar("M", bound="Message")


def unpack_as(raw: bytes, kind: type[M]) -> M:
    """Decode and insist on one message type."""
    msg = unpack(raw)
    if not isinstance(msg, kind):
        raise ProtocolError(f"expected a {kind.message_type} message, got {msg.message_type}")
    return msg
