"""User-endpoint ids and the `cmd_start_endpoint` command (protocol.md §4.4)."""

from __future__ import annotations

import json
import time
import uuid

from webservice.commands import (
    command_properties,
    encode_command,
    start_command,
    uep_id,
    uep_name,
)
from webservice.store.endpoints import UserEndpoint
from webservice.topology import Names

MGR = "ac2cdb86-acf6-4c9e-9a6e-af5fa27eea9d"
ALICE = "11111111-2222-3333-4444-555555555555"


def test_uep_id_is_deterministic_and_ignores_key_order() -> None:
    a = uep_id(MGR, ALICE, {"x": 1, "y": [1, 2]})
    assert a == uep_id(MGR, ALICE, {"y": [1, 2], "x": 1})
    assert uuid.UUID(a).version == 5


def test_uep_id_differs_by_identity_config_and_manager() -> None:
    base = uep_id(MGR, ALICE, None)
    assert base == uep_id(MGR, ALICE, {})
    assert base != uep_id(MGR, "someone-else", None)
    assert base != uep_id(MGR, ALICE, {"x": 1})
    assert base != uep_id(str(uuid.uuid4()), ALICE, None)


def test_uep_name_is_short_ids_of_manager_and_uep() -> None:
    uep = "419ee7ef-2ae2-41c6-8460-96b9b2f43891"
    assert uep_name(MGR, uep) == "uep.ac2cdb86.419ee7ef"


def test_start_command_matches_the_wire_capture_shape() -> None:
    uid = uep_id(MGR, ALICE, None)
    uep = UserEndpoint(uid, MGR, ALICE, uep_name(MGR, uid), {}, {"python_version": "3.11"})
    names = Names(b"k" * 32, "tg.")
    url = "amqp://ep.x:p@h/%2F"
    cmd = json.loads(encode_command(start_command(uep, "alice@example.org", names, url)))
    assert cmd["command"] == "cmd_start_endpoint"
    assert cmd["args"] == []
    assert cmd["globus_effective_identity"] == ALICE
    assert cmd["globus_identity_set"] == [{"sub": ALICE}]
    assert cmd["globus_username"] == "alice@example.org"
    kwargs = cmd["kwargs"]
    assert kwargs["name"] == uep.name
    assert kwargs["user_opts"] == {}
    assert kwargs["user_runtime"] == {"python_version": "3.11"}
    creds = kwargs["amqp_creds"]
    assert set(creds) == {
        "endpoint_id",
        "task_queue_info",
        "result_queue_info",
        "heartbeat_queue_info",
    }
    assert creds["endpoint_id"] == uid
    assert creds["task_queue_info"]["queue"] == names.tasks_queue(uid)
    assert creds["task_queue_info"]["queue"].startswith(f"{uid}.tasks.")
    assert {creds[k]["connection_url"] for k in set(creds) - {"endpoint_id"}} == {url}
    assert creds["result_queue_info"]["queue_publish_kwargs"]["routing_key"] == f"{uid}.results"


def test_command_properties_are_json_persistent_and_timestamped_in_seconds() -> None:
    before = int(time.time())
    props = command_properties()
    after = time.time()
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert isinstance(props.timestamp, int)
    assert before <= props.timestamp <= after  # now, in seconds (not milliseconds)
    # Dropped by the broker before the manager would reject it as too old (180 s).
    assert props.expiration is not None and int(props.expiration) < 180_000
