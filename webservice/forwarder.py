"""The result forwarder: `results` queue -> SQLite -> the submitter's task-group queue.

Each drained batch of deliveries is handled in four steps, always in this order:

1. decode and classify (malformed, unknown task, duplicate, new);
2. store the new results in one transaction (so REST sees them even if step 3 fails);
3. republish the *same bytes* to `<queue_prefix><task_group>` and wait for the confirms;
4. record the publish times, then ack (one `multiple` ack when the whole batch went well).

A crash between any two steps loses nothing: unacked deliveries come back, a stored but
unpublished result is published on redelivery, and a published one is never published twice
(exactly once toward the SDK, whose watcher would otherwise see the result twice).

Results the service makes itself (failures for tasks whose user endpoint could not start) go
through the same loop via `fail_tasks`, so they are deduplicated against real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pika

from endpoint.errors import ProtocolError
from endpoint.protocol.messages import Result, pack, unpack_as
from webservice.amqp import AmqpLink, Delivery
from webservice.errors import BrokerUnavailable
from webservice.store.tasks import DONE, Completion, Routing, TaskStore
from webservice.topology import RESULTS_QUEUE, RESULTS_SUFFIX, sender_of

log = logging.getLogger(__name__)

#: Seconds to hold back a requeue after a failed republish, so an outage is not a busy loop.
REQUEUE_DELAY_S = 1.0
CONFIRM_TIMEOUT_S = 30.0


@dataclass
class _Item:
    body: bytes
    delivery: Delivery | None = None
    done: asyncio.Future[None] | None = None
    #: time.monotonic() when it arrived: the forwarder's lag metric (`webservice.metrics`).
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class _Publish:
    item: _Item
    task_id: str
    queue: str


@dataclass
class _Plan:
    """What one batch needs: results to store, and results to republish."""

    store: list[Completion] = field(default_factory=list)
    publish: list[_Publish] = field(default_factory=list)


class ResultForwarder:
    def __init__(self, link: AmqpLink, tasks: TaskStore, prefetch: int) -> None:
        self._link = link
        self._tasks = tasks
        self._prefetch = prefetch
        self._inbox: list[_Item] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run())
        await self._link.consume(RESULTS_QUEUE, self._prefetch, self._on_delivery)

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand (so nothing is published and then left unrecorded)."""
        if self._runner is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._runner), timeout)
        except TimeoutError:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    @property
    def backlog(self) -> int:
        """Results received and not yet stored and forwarded (a metric, `webservice.metrics`)."""
        return len(self._inbox)

    @property
    def lag_s(self) -> float:
        """How long the oldest result waiting in the inbox has waited (0 when none waits)."""
        inbox = self._inbox
        return time.monotonic() - inbox[0].arrived if inbox else 0.0

    def _on_delivery(self, delivery: Delivery) -> None:
        self._inbox.append(_Item(delivery.body, delivery))
        self._wake.set()

    async def fail_tasks(
        self, task_ids: Sequence[str], endpoint_id: str, code: str, message: str
    ) -> None:
        """Give each task a failed Result (unless it already has one), stored and forwarded."""
        if not task_ids:
            return
        loop = asyncio.get_running_loop()
        items = []
        for tid in task_ids:
            result = Result(
                task_id=tid,
                data=message,
                details={"endpoint_id": endpoint_id},
                error_details={"code": code, "user_message": message},
            )
            items.append(_Item(pack(result), done=loop.create_future()))
        self._inbox.extend(items)
        self._wake.set()
        await asyncio.gather(*(i.done for i in items if i.done is not None))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return  # what is left in the inbox was never acked: the broker redelivers it
            batch, self._inbox = self._inbox, []
            if batch:
                try:
                    await self._process(batch)
                except Exception:
                    # Never let one bad batch stop forwarding; its deliveries come back.
                    log.exception("result batch of %d failed", len(batch))
                    await self._settle(batch, failed=set(map(id, batch)))

    async def _process(self, batch: list[_Item]) -> None:
        plan = self._plan(batch)
        if plan.store:
            self._tasks.complete(plan.store)
        failed = await self._publish(plan.publish)
        await self._settle(batch, failed)
        log.debug(
            "result batch: %d in, %d stored, %d forwarded, %d failed",
            len(batch),
            len(plan.store),
            len(plan.publish) - len(failed),
            len(failed),
        )

    def _plan(self, batch: list[_Item]) -> _Plan:
        decoded: list[tuple[_Item, Result]] = []
        for item in batch:
            try:
                decoded.append((item, unpack_as(item.body, Result)))
            except ProtocolError as e:
                # Acked and dropped: requeueing a message that can never decode loops forever.
                log.warning("dropping a malformed message on %r: %s", RESULTS_QUEUE, e)
        routing = self._tasks.routing([r.task_id for _, r in decoded])
        plan = _Plan()
        seen: set[str] = set()
        now = time.time()
        for item, result in decoded:
            route = routing.get(result.task_id)
            if not self._is_new(result.task_id, route, seen) or not _from_its_endpoint(
                item, result.task_id, route
            ):
                continue
            assert route is not None
            seen.add(result.task_id)
            if route.status not in DONE:
                plan.store.append(
                    Completion(result.task_id, result.is_error, result.data, result.details, now)
                )
            if route.queue_name:
                plan.publish.append(_Publish(item, result.task_id, route.queue_name))
        return plan

    @staticmethod
    def _is_new(task_id: str, route: Routing | None, seen: set[str]) -> bool:
        if route is None:
            log.warning("dropping a result for unknown task %s", task_id)
            return False
        if task_id in seen:
            log.info("dropping a duplicate result for task %s", task_id)
            return False
        if route.status in DONE and (route.published or not route.queue_name):
            log.info("dropping a duplicate result for task %s", task_id)
            return False
        return True

    async def _publish(self, publishes: list[_Publish]) -> set[int]:
        """Republish and wait for confirms; returns the ids of the items that failed."""
        if not publishes:
            return set()
        props = pika.BasicProperties(delivery_mode=2, timestamp=int(time.time()))
        confirmed_at: dict[str, int] = {}
        sent: list[tuple[_Publish, asyncio.Future[None]]] = []
        failed: set[int] = set()
        for p in publishes:
            try:
                fut = self._link.publish("", p.queue, p.item.body, props)
            except BrokerUnavailable:
                failed.add(id(p.item))
                continue
            fut.add_done_callback(functools.partial(_stamp, confirmed_at, p.task_id))
            sent.append((p, fut))
        if sent:
            await asyncio.wait([f for _, f in sent], timeout=CONFIRM_TIMEOUT_S)
        published = []
        for p, fut in sent:
            if fut.done() and fut.exception() is None:
                published.append((p.task_id, confirmed_at[p.task_id]))
            else:
                failed.add(id(p.item))
        if published:
            self._tasks.mark_published(published)
        return failed

    async def _settle(self, batch: list[_Item], failed: set[int]) -> None:
        """Ack what is done, requeue what is not, and wake the callers of `fail_tasks`."""
        for item in batch:
            if item.done is not None and not item.done.done():
                if id(item) in failed:
                    item.done.set_exception(BrokerUnavailable("could not forward a result"))
                else:
                    item.done.set_result(None)
        deliveries = [i for i in batch if i.delivery is not None]
        if not failed:
            _ack_all([i.delivery for i in deliveries if i.delivery is not None])
            return
        await asyncio.sleep(REQUEUE_DELAY_S)
        for item in deliveries:
            assert item.delivery is not None
            if id(item) in failed:
                AmqpLink.nack(item.delivery, requeue=True)
            else:
                AmqpLink.ack(item.delivery)


def _from_its_endpoint(item: _Item, task_id: str, route: Routing | None) -> bool:
    """A result counts only when published by the endpoint whose queue got the task.

    Broker topic permissions let an endpoint publish only on its own routing key, so the key
    names the sender; a result for someone else's task is a forgery (issue 13). Results the
    service makes itself (`fail_tasks`) have no delivery and are trusted.
    """
    if item.delivery is None or route is None:
        return True
    sender = sender_of(item.delivery.routing_key, RESULTS_SUFFIX)
    if sender == route.route_id:
        return True
    log.warning(
        "dropping a result for task %s from endpoint %s: the task was sent to %s",
        task_id,
        sender,
        route.route_id,
    )
    return False


def _stamp(confirmed_at: dict[str, int], task_id: str, _fut: asyncio.Future[None]) -> None:
    # When the broker confirmed the republish: the end of the task's bench interval.
    confirmed_at.setdefault(task_id, time.time_ns())


def _ack_all(deliveries: list[Delivery]) -> None:
    """One `multiple` ack per channel: everything up to its newest tag is settled."""
    newest: dict[int, Delivery] = {}
    for d in deliveries:
        key = id(d.channel)
        if key not in newest or d.tag > newest[key].tag:
            newest[key] = d
    for d in newest.values():
        AmqpLink.ack(d, multiple=True)
