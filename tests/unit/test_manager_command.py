"""Manager command messages: what is obeyed, and what is refused with a reason."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from endpoint.amqp import MessageProperties
from endpoint.manager.command import MAX_SKEW_S, Refusal, parse, redacted

UEP = "0d0e5c36-9f55-5d4b-8b8c-1f2e3d4c5b6a"
OWNER = "aaaaaaaa-0000-0000-0000-000000000001"
URL = "amqp://user:s3cret@127.0.0.1:5672/%2F"


def creds() -> dict[str, Any]:
    return {
        "endpoint_id": UEP,
        "task_queue_info": {"connection_url": URL, "queue": f"{UEP}.tasks"},
        "result_queue_info": {"connection_url": URL, "queue": "results"},
        "heartbeat_queue_info": {"connection_url": URL, "queue": "heartbeats"},
    }


def command(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "command": "cmd_start_endpoint",
        "args": [],
        "kwargs": {
            "name": "uep.abc.def",
            "amqp_creds": creds(),
            "user_opts": {"workers": 2},
            "user_runtime": {
                "python": {"version": "3.11.7"},
                "globus_compute_sdk_version": "4.19.0",
            },
        },
        "globus_effective_identity": OWNER,
        "globus_identity_set": [{"sub": OWNER}],
        "globus_username": "owner@example.org",
    }
    doc.update(overrides)
    return doc


def props(**overrides: Any) -> MessageProperties:
    values: dict[str, Any] = {
        "content_type": "application/json",
        "timestamp": int(time.time()),
        "headers": {},
    }
    values.update(overrides)
    return MessageProperties(**values)


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_a_start_command_becomes_a_start_request() -> None:
    req = parse(props(), body(command()), time.time())
    assert req.endpoint_id == UEP and req.name == "uep.abc.def"
    assert req.user_opts == {"workers": 2}
    assert req.identities == [{"sub": OWNER, "id": OWNER, "username": "owner@example.org"}]
    assert req.user_python_version() == "3.11.7" and req.user_sdk_version() == "4.19.0"


@pytest.mark.parametrize("skew", [MAX_SKEW_S + 5, -(MAX_SKEW_S + 5)])
def test_stale_or_future_commands_are_refused_with_a_report_address(skew: int) -> None:
    with pytest.raises(Refusal, match="stale or from a skewed clock") as err:
        parse(props(timestamp=int(time.time()) - skew), body(command()), time.time())
    assert err.value.creds is not None and err.value.creds.doc == creds()


@pytest.mark.parametrize(
    "p, message",
    [
        (props(content_type="text/plain"), "content_type"),
        (props(content_type=None), "content_type"),
        (props(timestamp=None), "no integer timestamp"),
    ],
)
def test_the_envelope_is_checked(p: MessageProperties, message: str) -> None:
    with pytest.raises(Refusal, match=message):
        parse(p, body(command()), time.time())


def test_unknown_and_malformed_commands_are_refused() -> None:
    with pytest.raises(Refusal, match="unknown command 'cmd_format_disk'") as err:
        parse(props(), body(command(command="cmd_format_disk")), time.time())
    assert err.value.creds is not None  # the submitter still hears about it
    with pytest.raises(Refusal, match="malformed command name"):
        parse(props(), body(command(command="rm -rf /")), time.time())


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_bodies_that_are_not_json_objects_are_refused(raw: bytes) -> None:
    with pytest.raises(Refusal) as err:
        parse(props(), raw, time.time())
    assert err.value.creds is None


def test_bad_kwargs_are_refused() -> None:
    doc = command()
    doc["kwargs"]["name"] = "../escape"
    with pytest.raises(Refusal, match="bad name"):
        parse(props(), body(doc), time.time())
    doc = command()
    doc["kwargs"]["user_opts"] = ["not", "a", "dict"]
    with pytest.raises(Refusal, match="user_opts must be a JSON object"):
        parse(props(), body(doc), time.time())
    doc = command(globus_identity_set="me")
    with pytest.raises(Refusal, match="globus_identity_set must be a list"):
        parse(props(), body(doc), time.time())
    doc = command()
    del doc["kwargs"]["amqp_creds"]["heartbeat_queue_info"]
    with pytest.raises(Refusal, match="amqp_creds is missing or malformed") as err:
        parse(props(), body(doc), time.time())
    assert err.value.creds is None


def test_the_debug_log_of_a_command_hides_its_credentials() -> None:
    text = redacted(body(command()))
    assert "s3cret" not in text and "<redacted>" in text and "uep.abc.def" in text
