"""Fuzzing the wire parsers: messagepack envelopes and SDK serialization payloads.

The property everywhere: whatever comes in, the parser returns a value or raises one of our
own `EndpointError`s, never a library exception (TypeError, KeyError, RecursionError, ...),
and never takes long (hypothesis' deadline catches a hang).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from endpoint.errors import EndpointError, ProtocolError, SerializationError
from endpoint.protocol.messages import (
    PROTOCOL_VERSION,
    EPStatusReport,
    Result,
    Task,
    pack,
    unpack,
    unpack_as,
)
from endpoint.protocol.serialize import (
    STRATEGIES,
    WILDCARD_CODE,
    WILDCARD_DATA,
    deserialize,
    pack_buffers,
    parse_allowlist,
    serialize,
    strategy_for_payload,
    unpack_buffers,
    unpack_task_buffer,
)

FUZZ = settings(
    max_examples=500,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

#: Any JSON value, nested a few levels: what a hostile producer can put in a field.
json_values = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.floats(allow_nan=False) | hs.text(max_size=20),
    lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=10), inner),
    max_leaves=20,
)


def only_our_errors(fn: Callable[..., Any], *args: Any) -> Any:
    """Call `fn`; an EndpointError is fine, anything else fails the property."""
    try:
        return fn(*args)
    except EndpointError as e:
        assert str(e), f"{type(e).__name__} without a message"
        return e


def _valid_messages() -> list[bytes]:
    tid = str(uuid.uuid4())
    return [
        pack(Task(task_id=tid, task_buffer=pack_buffers([serialize(len)]))),
        pack(Result(task_id=tid, data=serialize(3))),
        pack(
            Result(
                task_id=tid,
                data="boom",
                error_details={"code": "X", "user_message": "boom"},
                task_statuses=[],
            )
        ),
        pack(EPStatusReport(endpoint_id=tid, global_state={"active": True})),
    ]


VALID_MESSAGES = _valid_messages()


@hs.composite
def mutated_bytes(draw: hs.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid seed with a few random byte edits: flips, cuts, insertions."""
    data = bytearray(draw(hs.sampled_from(seeds)))
    for _ in range(draw(hs.integers(1, 6))):
        op = draw(hs.sampled_from(["flip", "cut", "insert", "truncate"]))
        pos = draw(hs.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(hs.integers(0, 255))
        elif op == "cut" and data:
            del data[pos : pos + draw(hs.integers(1, 8))]
        elif op == "insert":
            data[pos:pos] = draw(hs.binary(min_size=1, max_size=8))
        else:
            data = data[:pos]
    return bytes(data)


# ---- messagepack ---------------------------------------------------------------------------


@FUZZ
@given(hs.binary(max_size=300))
def test_unpack_random_bytes(raw: bytes) -> None:
    only_our_errors(unpack, raw)


@FUZZ
@given(hs.binary(max_size=300))
def test_unpack_random_bytes_after_the_version_byte(raw: bytes) -> None:
    only_our_errors(unpack, PROTOCOL_VERSION + raw)


@FUZZ
@given(mutated_bytes(VALID_MESSAGES))
def test_unpack_mutated_valid_messages(raw: bytes) -> None:
    only_our_errors(unpack, raw)


@FUZZ
@given(
    kind=hs.sampled_from(["task", "result", "ep_status_report", "other"]) | json_values,
    data=hs.dictionaries(
        hs.sampled_from(
            [
                "task_id",
                "task_buffer",
                "container_id",
                "container",
                "data",
                "details",
                "error_details",
                "task_statuses",
                "endpoint_id",
                "global_state",
                "ep_status_report",
            ]
        ),
        json_values | hs.just(str(uuid.uuid4())),
    )
    | json_values,
)
def test_unpack_well_formed_json_of_any_shape(kind: Any, data: Any) -> None:
    doc = {"message_type": kind, "data": data}
    raw = PROTOCOL_VERSION + json.dumps(doc).encode()
    msg = only_our_errors(unpack, raw)
    if not isinstance(msg, EndpointError):
        # Whatever decoded is well typed: a worker can use it without further checks.
        if isinstance(msg, Task):
            assert isinstance(msg.task_buffer, str) and uuid.UUID(msg.task_id)
        elif isinstance(msg, Result):
            assert isinstance(msg.data, str)
            assert msg.error_details is None or {"code", "user_message"} <= set(msg.error_details)


def test_unpack_deeply_nested_json_is_a_protocol_error() -> None:
    raw = PROTOCOL_VERSION + b'{"message_type":"task","data":' + b"[" * 100_000 + b"]" * 100_000
    err = only_our_errors(unpack, raw + b"}")
    assert isinstance(err, ProtocolError)


@FUZZ
@given(mutated_bytes(VALID_MESSAGES))
def test_unpack_as_task_only_returns_tasks(raw: bytes) -> None:
    msg = only_our_errors(unpack_as, raw, Task)
    assert isinstance(msg, Task | EndpointError)


# ---- serialization -------------------------------------------------------------------------

HEADERS = sorted(STRATEGIES)
DATA_PAYLOADS = [serialize(3), serialize({"a": [1, 2]}), STRATEGIES["11\n"].serialize([1, "x"])]
CODE_PAYLOADS = [serialize(len), STRATEGIES["st\n"].serialize(only_our_errors)]
ALL_PAYLOADS = [*DATA_PAYLOADS, *CODE_PAYLOADS, STRATEGIES["13\n"].serialize(7)]


@hs.composite
def mutated_text(draw: hs.DrawFn, seeds: list[str]) -> str:
    text = list(draw(hs.sampled_from(seeds)))
    for _ in range(draw(hs.integers(1, 5))):
        op = draw(hs.sampled_from(["replace", "cut", "insert", "truncate"]))
        pos = draw(hs.integers(0, max(0, len(text) - 1)))
        if op == "replace" and text:
            text[pos] = draw(hs.characters())
        elif op == "cut":
            del text[pos : pos + draw(hs.integers(1, 10))]
        elif op == "insert":
            text[pos:pos] = list(draw(hs.text(min_size=1, max_size=5)))
        else:
            text = text[:pos]
    return "".join(text)


#: Random payloads that at least start with a known header, so the strategy body is reached.
headed_text = hs.builds(
    lambda h, body: h + body,
    hs.sampled_from(HEADERS),
    hs.text(alphabet=hs.characters(codec="utf-8"), max_size=80),
)
payload_text = hs.text(max_size=80) | headed_text | mutated_text(ALL_PAYLOADS)


@FUZZ
@given(payload_text)
def test_strategy_for_payload(payload: str) -> None:
    only_our_errors(strategy_for_payload, payload)


@FUZZ
@given(hs.text(max_size=200) | mutated_text([pack_buffers(ALL_PAYLOADS), "3\nabc12\n"]))
def test_unpack_buffers(packed: str) -> None:
    buffers = only_our_errors(unpack_buffers, packed)
    if isinstance(buffers, list):
        # Lengths are read with int(), as the SDK does, so "012" parses like "12"; what
        # parses must survive a round trip through our own framing unchanged.
        assert unpack_buffers(pack_buffers(buffers)) == buffers


@FUZZ
@given(json_values | hs.binary(max_size=20))
def test_unpack_buffers_with_wrong_types(value: Any) -> None:
    if not isinstance(value, str):
        assert isinstance(only_our_errors(unpack_buffers, value), SerializationError)


@FUZZ
@given(payload_text)
def test_deserialize_without_allowlist(payload: str) -> None:
    only_our_errors(deserialize, payload)


ALLOWLISTS = [
    parse_allowlist([WILDCARD_CODE, WILDCARD_DATA]),
    parse_allowlist(
        [
            "globus_compute_sdk.serialize.DillCode",
            "globus_compute_sdk.serialize.JSONData",
        ]
    ),
    parse_allowlist([WILDCARD_CODE, "globus_compute_sdk.serialize.concretes.DillDataBase64"]),
]


@FUZZ
@given(payload_text, hs.sampled_from(ALLOWLISTS))
def test_deserialize_with_allowlist(payload: str, allow: Any) -> None:
    out = only_our_errors(deserialize, payload, allow)
    if not isinstance(out, EndpointError):
        assert allow.permits(strategy_for_payload(payload))


@FUZZ
@given(
    hs.lists(payload_text, max_size=4).map(pack_buffers)
    | mutated_text([pack_buffers([CODE_PAYLOADS[0], DATA_PAYLOADS[0], serialize({})])]),
    hs.sampled_from([None, *ALLOWLISTS]),
)
def test_unpack_task_buffer(buffer: str, allow: Any) -> None:
    only_our_errors(unpack_task_buffer, buffer, allow)


IMPORT_PATHS = [
    WILDCARD_CODE,
    WILDCARD_DATA,
    "globus_compute_sdk.serialize.DillCode",
    "globus_compute_sdk.serialize.concretes.JSONData",
    "globus_compute_sdk.serialize.concretes.PickleCode",
    "globus_compute_sdk.serialize.DEFAULT_STRATEGY_DATA",
]


@FUZZ
@given(
    hs.lists(hs.sampled_from(IMPORT_PATHS) | json_values | hs.text(max_size=30), max_size=5)
    | json_values
    | hs.binary(max_size=10)
)
def test_parse_allowlist(values: Any) -> None:
    only_our_errors(parse_allowlist, values)
