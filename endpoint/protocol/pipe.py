"""The pipes between a manager and each user endpoint it starts (both ends import this).

* **control** (the user endpoint's stdin): the manager writes one JSON line, the launch document
  (`LaunchDoc`: ``name``, ``endpoint_id``, the rendered ``config``, ``amqp_creds``), then a line
  ``{"op": "credentials", "amqp_creds": ...}`` each time the service sends another start command.
  Credentials thus never touch the disk. End of file means the manager is gone.
* **status**: one JSON line back (`StatusPipe`), ``{"ready": true, "pid": N}`` once the user
  endpoint is about to serve, or ``{"error": "..."}`` when it cannot start.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from endpoint.amqp.queues import AmqpCreds
from endpoint.errors import EndpointError, ProtocolError
from endpoint.host.dirs import validate_name


@dataclass(frozen=True)
class LaunchDoc:
    name: str
    endpoint_id: str
    config: str
    amqp_creds: AmqpCreds
    allowed_functions: list[str] | None = None
    ep_info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> LaunchDoc:
        try:
            creds = AmqpCreds.parse(doc["amqp_creds"])
            return cls(
                name=validate_name(str(doc["name"])),
                endpoint_id=str(doc["endpoint_id"]),
                config=str(doc["config"]),
                amqp_creds=creds,
                allowed_functions=doc.get("allowed_functions"),
                ep_info=doc.get("ep_info") or {},
            )
        except (KeyError, TypeError, EndpointError) as e:
            raise ProtocolError(f"invalid launch document: {e!r}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "op": "launch",
            "name": self.name,
            "endpoint_id": self.endpoint_id,
            "config": self.config,
            "amqp_creds": self.amqp_creds.to_json(),
            "allowed_functions": self.allowed_functions,
            "ep_info": self.ep_info,
        }


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


class StatusPipe:
    """The one-way report to the manager; gone (None) when started by hand."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def _send(self, message: dict[str, Any]) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, encode(message))
            os.close(self._fd)
        self._fd = None

    def ready(self) -> None:
        self._send({"ready": True, "pid": os.getpid()})

    def error(self, message: str) -> None:
        self._send({"error": message})


__all__ = ["LaunchDoc", "StatusPipe", "encode"]
