"""RabbitMQ names and declarations (protocol.md §4.1), and the queue infos handed out.

The endpoint and the SDK never declare anything, so every exchange and queue they touch is
declared here, durable, before its name leaves the service.
"""

from __future__ import annotations

import logging
from typing import Any

from webservice.amqp import AmqpLink

log = logging.getLogger(__name__)

TASKS_EXCHANGE = "tasks"
RESULTS_EXCHANGE = "results"
HEARTBEATS_EXCHANGE = "heartbeats"
RESULTS_QUEUE = "results"
HEARTBEATS_QUEUE = "heartbeats"


def tasks_queue(endpoint_id: str) -> str:
    return f"{endpoint_id}.tasks"


def commands_queue(endpoint_id: str) -> str:
    return f"{endpoint_id}.commands"


def _publish_kwargs(exchange: str, routing_key: str) -> dict[str, Any]:
    return {
        "exchange": exchange,
        "routing_key": routing_key,
        # mandatory: a publish that no binding routes comes back instead of vanishing.
        "mandatory": True,
        "properties": {"delivery_mode": 2},
    }


def queue_infos(endpoint_id: str, amqp_url: str) -> dict[str, dict[str, Any]]:
    """The four `*_queue_info` blocks for an endpoint (or a user endpoint's `amqp_creds`)."""
    return {
        "command_queue_info": {"connection_url": amqp_url, "queue": commands_queue(endpoint_id)},
        "task_queue_info": {
            "connection_url": amqp_url,
            "exchange": TASKS_EXCHANGE,
            "queue": tasks_queue(endpoint_id),
        },
        "result_queue_info": {
            "connection_url": amqp_url,
            "exchange": RESULTS_EXCHANGE,
            "queue": RESULTS_QUEUE,
            "queue_publish_kwargs": _publish_kwargs(RESULTS_EXCHANGE, f"{endpoint_id}.results"),
        },
        "heartbeat_queue_info": {
            "connection_url": amqp_url,
            "exchange": HEARTBEATS_EXCHANGE,
            "queue": HEARTBEATS_QUEUE,
            "queue_publish_kwargs": _publish_kwargs(
                HEARTBEATS_EXCHANGE, f"{endpoint_id}.heartbeats"
            ),
        },
    }


class Topology:
    """Declares the shared topology on every (re)connect, and per-endpoint queues on demand."""

    def __init__(self, link: AmqpLink) -> None:
        self._link = link
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
        tq, cq = tasks_queue(endpoint_id), commands_queue(endpoint_id)
        await self._link.declare_queue(tq)
        await self._link.bind_queue(tq, TASKS_EXCHANGE, tq)
        await self._link.declare_queue(cq)
        self._known.update((tq, cq))

    async def ensure_tasks_queue(self, endpoint_id: str) -> None:
        tq = tasks_queue(endpoint_id)
        if tq not in self._known:
            await self._link.declare_queue(tq)
            await self._link.bind_queue(tq, TASKS_EXCHANGE, tq)
            self._known.add(tq)

    async def ensure_queue(self, name: str) -> None:
        if name not in self._known:
            await self._link.declare_queue(name)
            self._known.add(name)

    async def delete_endpoint_queues(self, endpoint_id: str) -> None:
        for name in (tasks_queue(endpoint_id), commands_queue(endpoint_id)):
            await self._link.delete_queue(name)
            self._known.discard(name)
