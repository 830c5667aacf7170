"""RabbitMQ names and declarations (protocol.md §4.1), and the queue infos handed out.

The endpoint and the SDK never declare anything, so every exchange and queue they touch is
declared here, durable, before its name leaves the service.

Per-tenant queue names carry a secret token (`Names`): inside one vhost RabbitMQ answers a
passive declare of any queue whose name one knows, with its depth and consumer count, whatever
one's permissions (issue 13). Endpoint ids are not secret (a public endpoint's id is its
address), so `<endpoint>.tasks` alone would tell anyone how busy that endpoint is; with the
token only the service and the queue's own endpoint (or client) know the name.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from webservice.amqp import AmqpLink

log = logging.getLogger(__name__)

TASKS_EXCHANGE = "tasks"
RESULTS_EXCHANGE = "results"
HEARTBEATS_EXCHANGE = "heartbeats"
RESULTS_QUEUE = "results"
HEARTBEATS_QUEUE = "heartbeats"
#: Routing-key suffixes of what endpoints publish: `<endpoint id><suffix>`.
RESULTS_SUFFIX = ".results"
HEARTBEATS_SUFFIX = ".heartbeats"
#: Hex digits of a name token (96 bits: not guessable, short enough to read in a log).
TOKEN_HEX = 24


def sender_of(routing_key: str, suffix: str) -> str | None:
    """The endpoint id a `results`/`heartbeats` routing key names (None if malformed)."""
    return routing_key[: -len(suffix)] if routing_key.endswith(suffix) else None


class Names:
    """The service's queue names: stable (derived from the service key), unguessable."""

    def __init__(self, key: bytes, queue_prefix: str) -> None:
        self._key = key
        self._queue_prefix = queue_prefix

    def _token(self, kind: str, ident: str) -> str:
        mac = hmac.new(self._key, f"queue\n{kind}\n{ident}".encode(), hashlib.sha256)
        return mac.hexdigest()[:TOKEN_HEX]

    def tasks_queue(self, endpoint_id: str) -> str:
        return f"{endpoint_id}.tasks.{self._token('tasks', endpoint_id)}"

    def commands_queue(self, endpoint_id: str) -> str:
        return f"{endpoint_id}.commands.{self._token('commands', endpoint_id)}"

    def result_prefix(self, identity: str) -> str:
        """The `queue_prefix` of one client: its task groups' result queues start with it."""
        return f"{self._queue_prefix}{self._token('results', identity)}."

    def result_queue(self, identity: str, task_group_id: str) -> str:
        return f"{self.result_prefix(identity)}{task_group_id}"

    def queue_infos(self, endpoint_id: str, amqp_url: str) -> dict[str, dict[str, Any]]:
        """The four `*_queue_info` blocks for an endpoint (or a user endpoint's `amqp_creds`),
        with the URL of that endpoint's own broker account."""
        return {
            "command_queue_info": {
                "connection_url": amqp_url,
                "queue": self.commands_queue(endpoint_id),
            },
            "task_queue_info": {
                "connection_url": amqp_url,
                "exchange": TASKS_EXCHANGE,
                "queue": self.tasks_queue(endpoint_id),
            },
            "result_queue_info": {
                "connection_url": amqp_url,
                "exchange": RESULTS_EXCHANGE,
                "queue": RESULTS_QUEUE,
                "queue_publish_kwargs": _publish_kwargs(
                    RESULTS_EXCHANGE, f"{endpoint_id}{RESULTS_SUFFIX}"
                ),
            },
            "heartbeat_queue_info": {
                "connection_url": amqp_url,
                "exchange": HEARTBEATS_EXCHANGE,
                "queue": HEARTBEATS_QUEUE,
                "queue_publish_kwargs": _publish_kwargs(
                    HEARTBEATS_EXCHANGE, f"{endpoint_id}{HEARTBEATS_SUFFIX}"
                ),
            },
        }


def _publish_kwargs(exchange: str, routing_key: str) -> dict[str, Any]:
    return {
        "exchange": exchange,
        "routing_key": routing_key,
        # mandatory: a publish that no binding routes comes back instead of vanishing.
        "mandatory": True,
        "properties": {"delivery_mode": 2},
    }


class Topology:
    """Declares the shared topology on every (re)connect, and per-endpoint queues on demand."""

    def __init__(self, link: AmqpLink, names: Names) -> None:
        self._link = link
        self.names = names
        # Queues known to exist on this broker connection: durable, so one declare suffices
        # until a reconnect (the broker may have been replaced by then).
        self._known: set[str] = set()
        link.on_ready(self.declare_shared)

    async def declare_shared(self) -> None:
        self._known.clear()
        link = self._link
        await link.declare_exchange(TASKS_EXCHANGE, "direct")
        await link.declare_exchange(RESULTS_EXCHANGE, "topic")
        await link.declare_exchange(HEARTBEATS_EXCHANGE, "topic")
        await link.declare_queue(RESULTS_QUEUE)
        await link.bind_queue(RESULTS_QUEUE, RESULTS_EXCHANGE, "*.results")
        await link.declare_queue(HEARTBEATS_QUEUE)
        await link.bind_queue(HEARTBEATS_QUEUE, HEARTBEATS_EXCHANGE, "*.heartbeats")
        log.info("AMQP topology declared")

    async def declare_endpoint(self, endpoint_id: str) -> None:
        """`<id>.tasks` (bound to `tasks` by its own name) and `<id>.commands`."""
        tq, cq = self.names.tasks_queue(endpoint_id), self.names.commands_queue(endpoint_id)
        await self._link.declare_queue(tq)
        await self._link.bind_queue(tq, TASKS_EXCHANGE, tq)
        await self._link.declare_queue(cq)
        self._known.update((tq, cq))

    async def ensure_tasks_queue(self, endpoint_id: str) -> None:
        tq = self.names.tasks_queue(endpoint_id)
        if tq not in self._known:
            await self._link.declare_queue(tq)
            await self._link.bind_queue(tq, TASKS_EXCHANGE, tq)
            self._known.add(tq)

    def forget(self, name: str) -> None:
        """`name` may be gone (a publish to it came back): declare it again before next use."""
        self._known.discard(name)

    async def ensure_queue(self, name: str) -> None:
        if name not in self._known:
            await self._link.declare_queue(name)
            self._known.add(name)

    async def delete_endpoint_queues(self, endpoint_id: str) -> None:
        for name in (self.names.tasks_queue(endpoint_id), self.names.commands_queue(endpoint_id)):
            await self._link.delete_queue(name)
            self._known.discard(name)
