"""Typed AMQP queue credentials, parsed once from what the web service hands out.

The service describes each queue as a JSON object (`protocol.md` §3): a ``connection_url`` with
the account's credentials, the ``queue`` name and, for queues we publish to,
``queue_publish_kwargs``. A registration carries three (tasks, results, heartbeats; a manager
gets a command queue too) and a manager's start command carries the same three as
``amqp_creds``. Everything past the parse works on `QueueInfo` and `EndpointQueues`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from endpoint.amqp.session import Outgoing, with_port
from endpoint.errors import ProtocolError

#: The keys of the three queues of a user endpoint, in `amqp_creds` and in a registration.
QUEUE_KEYS = ("task_queue_info", "result_queue_info", "heartbeat_queue_info")


@dataclass(frozen=True)
class QueueInfo:
    connection_url: str
    queue: str
    exchange: str = ""
    routing_key: str = ""
    properties: dict[str, Any] | None = None
    mandatory: bool = True

    @classmethod
    def from_service(cls, info: dict[str, Any], amqp_port: int | None) -> QueueInfo:
        kw = info.get("queue_publish_kwargs") or {}
        return cls(
            connection_url=with_port(info["connection_url"], amqp_port),
            queue=info["queue"],
            exchange=kw.get("exchange", info.get("exchange", "")),
            routing_key=kw.get("routing_key", info["queue"]),
            properties=kw.get("properties") or {"delivery_mode": 2},
            mandatory=bool(kw.get("mandatory", True)),
        )

    def outgoing(self, key: str, body: bytes) -> Outgoing:
        return Outgoing(
            key, self.exchange, self.routing_key, body, dict(self.properties or {}), self.mandatory
        )


def check_creds(creds: Any) -> None:
    """`amqp_creds` must name its endpoint and carry the three queue infos with URLs."""
    if not isinstance(creds, dict) or not isinstance(creds.get("endpoint_id"), str):
        raise ProtocolError("amqp_creds must be an object with an endpoint_id")
    for key in QUEUE_KEYS:
        info = creds.get(key)
        if not isinstance(info, dict) or not isinstance(info.get("connection_url"), str):
            raise ProtocolError(f"amqp_creds.{key} must be an object with a connection_url")
        if not isinstance(info.get("queue"), str):
            raise ProtocolError(f"amqp_creds.{key} must name its queue")


@dataclass(frozen=True)
class AmqpCreds:
    """A user endpoint's queue credentials as the service sent them (``amqp_creds``), checked
    once; `doc` is forwarded as is (to the user endpoint's control pipe)."""

    endpoint_id: str
    doc: dict[str, Any]

    @classmethod
    def parse(cls, creds: Any) -> AmqpCreds:
        """ProtocolError unless `creds` names its endpoint and carries three queue infos."""
        check_creds(creds)
        return cls(creds["endpoint_id"], creds)

    def queues(self, amqp_port: int | None) -> EndpointQueues:
        return EndpointQueues.from_service(self.doc, amqp_port)

    def to_json(self) -> dict[str, Any]:
        return dict(self.doc)


@dataclass(frozen=True)
class EndpointQueues:
    """A user endpoint's three queues: tasks in, results and heartbeats out."""

    tasks: QueueInfo
    results: QueueInfo
    heartbeats: QueueInfo

    @classmethod
    def from_service(cls, doc: dict[str, Any], amqp_port: int | None) -> EndpointQueues:
        """From a registration's answer or a start command's `amqp_creds` (same keys)."""
        return cls(
            tasks=QueueInfo.from_service(doc["task_queue_info"], amqp_port),
            results=QueueInfo.from_service(doc["result_queue_info"], amqp_port),
            heartbeats=QueueInfo.from_service(doc["heartbeat_queue_info"], amqp_port),
        )
