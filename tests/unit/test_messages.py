"""messagepack v1 messages: round trips, byte equality with the official packer, bad input."""

from __future__ import annotations

import base64
import json
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from endpoint.errors import ProtocolError
from endpoint.protocol.messages import (
    EPStatusReport,
    Message,
    Result,
    Task,
    pack,
    transition,
    unpack,
    unpack_as,
)

REPO = Path(__file__).resolve().parents[2]
TID = "7c61dce3-e238-4373-9e3c-35a81ac755e0"
EPID = "419ee7ef-2ae2-41c6-8460-96b9b2f43891"
# Exactly as the official endpoint sent them (wire-capture.log).
WIRE_TASK = (
    b'\x01{"message_type":"task","data":{"task_id":"6866402e-f21c-49bc-b99c-c9a54dadb7a6",'
    b'"container_id":null,"container":null,"task_buffer":"12\\n00\\ngAQpLg==\\n"}}'
)
WIRE_HEARTBEAT = (
    b'\x01{"message_type":"ep_status_report","data":{"endpoint_id":'
    b'"ac2cdb86-acf6-4c9e-9a6e-af5fa27eea9d","global_state":{"heartbeat_period":10},'
    b'"task_statuses":{}}}'
)
STATUSES = [
    {"timestamp": 1795257483056727254, "state": "execution-start", "actor": "worker"},
    {"timestamp": 1795257483056999999, "state": "execution-end", "actor": "worker"},
]


def samples() -> list[Message]:
    details = {"os": "Linux", "dill_version": "0.3.9", "endpoint_id": EPID}
    return [
        Task(task_id=TID, task_buffer="28\n00\ngASVBQAAAAAAAABLKIWULg==\n"),
        Task(task_id=TID, task_buffer="ünï ✓", container_id=EPID),
        Result(task_id=TID, data="00\ngARLKi4=\n", details=details, task_statuses=STATUSES),
        Result(
            task_id=TID,
            data='Traceback (most recent call last):\n  File "x.py"\nValueError: "kaboom"\n',
            details=details,
            error_details={"code": "RemoteExecutionError", "user_message": "An error ✗"},
            task_statuses=STATUSES,
        ),
        Result(task_id=TID, data=""),
        EPStatusReport(endpoint_id=EPID, global_state={"heartbeat_period": 10}),
        EPStatusReport(
            endpoint_id=EPID,
            global_state={"total_cores": 2, "total_mem": 22.8, "active": True, "x": None},
            task_statuses={TID: STATUSES[:1]},
        ),
    ]


@pytest.mark.parametrize("msg", samples(), ids=lambda m: m.message_type)
def test_round_trip(msg: Message) -> None:
    assert unpack(pack(msg)) == msg


def test_wire_bytes_decode_and_re_encode_identically() -> None:
    for raw in (WIRE_TASK, WIRE_HEARTBEAT):
        assert pack(unpack(raw)) == raw


def test_status_report_accepts_alias() -> None:
    raw = WIRE_HEARTBEAT.replace(b'"global_state"', b'"ep_status_report"')
    report = unpack_as(raw, EPStatusReport)
    assert report.global_state == {"heartbeat_period": 10}


def test_unknown_fields_are_ignored() -> None:
    raw = WIRE_TASK.replace(b'"container":null', b'"container":null,"extra":1')
    assert unpack_as(raw, Task).task_buffer == "12\n00\ngAQpLg==\n"


def test_transition_is_wire_shaped() -> None:
    t = transition("execution-start", "worker")
    assert set(t) == {"timestamp", "state", "actor"} and isinstance(t["timestamp"], int)


def test_unpack_as_insists_on_the_type() -> None:
    with pytest.raises(ProtocolError, match="expected a result message, got task"):
        unpack_as(WIRE_TASK, Result)


def _with_data(data: dict[str, Any], message_type: str = "task") -> bytes:
    return b"\x01" + json.dumps({"message_type": message_type, "data": data}).encode()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "empty message"),
        (b"\x02" + WIRE_TASK[1:], "unrecognized protocol version"),
        (WIRE_TASK[1:], "unrecognized protocol version"),
        (b"\x01{not json", "not JSON"),
        (b"\x01\xff\xfe", "not JSON"),
        (b"\x01[1, 2]", "not an object"),
        (b'\x01{"message_type":"task","data":[]}', "not an object"),
        (_with_data({}, "bogus"), "unsupported message_type 'bogus'"),
        (_with_data({"task_buffer": "x"}), "missing required field 'task_id'"),
        (_with_data({"task_id": TID}), "missing required field 'task_buffer'"),
        (_with_data({"task_id": "nope", "task_buffer": "x"}), "not a UUID"),
        (_with_data({"task_id": TID, "task_buffer": 5}), "field 'task_buffer' has type int"),
        (_with_data({"task_id": TID, "data": "x", "details": []}, "result"), "'details'"),
        (
            _with_data({"task_id": TID, "data": "x", "error_details": {"code": "X"}}, "result"),
            "error_details",
        ),
        (_with_data({"endpoint_id": EPID}, "ep_status_report"), "global_state"),
    ],
)
def test_malformed_input_raises_protocol_error(raw: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        unpack(raw)


# ---- the official packer, as a subprocess -------------------------------------------------


PEER_SCRIPT = textwrap.dedent(
    """
    import base64, json, sys
    from globus_compute_common import messagepack
    from globus_compute_common.messagepack.message_types import (
        EPStatusReport, Result, ResultErrorDetails, Task, TaskTransition,
    )

    def transitions(items):
        return [TaskTransition(**t) for t in items]

    def build(kind, f):
        if kind == "task":
            return Task(**f)
        if kind == "result":
            if f.get("error_details"):
                f["error_details"] = ResultErrorDetails(**f["error_details"])
            if f.get("task_statuses") is not None:
                f["task_statuses"] = transitions(f["task_statuses"])
            return Result(**f)
        f["task_statuses"] = {k: transitions(v) for k, v in f["task_statuses"].items()}
        return EPStatusReport(**f)

    specs, ours = json.load(sys.stdin)
    packed = [base64.b64encode(messagepack.pack(build(k, f))).decode() for k, f in specs]
    decoded = [repr(messagepack.unpack(base64.b64decode(raw))) for raw in ours]
    print(json.dumps([packed, decoded]))
    """
)


@pytest.fixture(scope="module")
def official(peer_python: Path) -> tuple[list[bytes], list[str]]:
    peer = str(peer_python)
    msgs = samples()
    specs = [[m.message_type, m.to_wire()] for m in msgs]
    ours = [base64.b64encode(pack(m)).decode() for m in msgs]
    proc = subprocess.run(
        [peer, "-c", PEER_SCRIPT],
        input=json.dumps([specs, ours]),
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    packed, decoded = json.loads(proc.stdout)
    return [base64.b64decode(p) for p in packed], decoded


@pytest.mark.parametrize("index", range(len(samples())))
def test_pack_is_byte_identical_to_official(
    official: tuple[list[bytes], list[str]], index: int
) -> None:
    msg, raw = samples()[index], official[0][index]
    assert unpack(raw) == msg
    assert pack(msg) == raw


def test_official_unpacks_ours(official: tuple[list[bytes], list[str]]) -> None:
    _, decoded = official
    assert len(decoded) == len(samples())
    assert all(str(uuid.UUID(TID)) in d or EPID in d for d in decoded)
