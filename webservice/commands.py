"""User endpoints of manager endpoints: their ids, and the `cmd_start_endpoint` command.

The official 4.x endpoint always runs as a manager ("core") endpoint: it runs no tasks itself but
starts one user endpoint (UEP) per distinct (identity, user_endpoint_config) when told to on
its command queue (protocol.md §4.4). The UEP id is derived, not stored-and-looked-up, so the
same submitter with the same config always lands on the same UEP and its queue.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pika

from webservice.store.endpoints import UserEndpoint
from webservice.topology import Names

START_COMMAND = "cmd_start_endpoint"

#: The manager ignores commands older than 180 s (clock skew check); let the broker drop them
#: first, or a manager coming back after an outage would answer each stale one with a start
#: failure, which fails the tasks waiting for that UEP.
COMMAND_TTL_MS = 150_000


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def uep_id(manager_id: str, identity: str, user_endpoint_config: dict[str, Any] | None) -> str:
    """Deterministic: uuid5 in the manager's namespace of identity + canonical config."""
    key = f"{identity}\n{canonical_json(user_endpoint_config or {})}"
    return str(uuid.uuid5(uuid.UUID(manager_id), key))


def uep_name(manager_id: str, uep: str) -> str:
    # Becomes the UEP's directory name under the manager's ~/.globus_compute/.
    return f"uep.{manager_id[:8]}.{uep[:8]}"


def start_command(uep: UserEndpoint, username: str, names: Names, amqp_url: str) -> dict[str, Any]:
    """`amqp_url` carries the user endpoint's own broker account (`principals.py`)."""
    infos = names.queue_infos(uep.uep_id, amqp_url)
    return {
        "command": START_COMMAND,
        "args": [],
        "kwargs": {
            "name": uep.name,
            "amqp_creds": {
                "endpoint_id": uep.uep_id,
                "task_queue_info": infos["task_queue_info"],
                "result_queue_info": infos["result_queue_info"],
                "heartbeat_queue_info": infos["heartbeat_queue_info"],
            },
            "user_opts": uep.user_opts,
            "user_runtime": uep.user_runtime,
        },
        "globus_effective_identity": uep.owner,
        "globus_identity_set": [{"sub": uep.owner}],
        "globus_username": username,
    }


def command_properties() -> pika.BasicProperties:
    # content_type and an integer timestamp are required: the manager drops anything else.
    return pika.BasicProperties(
        content_type="application/json",
        # Mandatory publishes are matched to the broker's returns by this id.
        message_id=str(uuid.uuid4()),
        delivery_mode=2,
        timestamp=int(time.time()),
        expiration=str(COMMAND_TTL_MS),
    )


def encode_command(command: dict[str, Any]) -> bytes:
    return json.dumps(command).encode()
