"""The heartbeat consumer: endpoint liveness, start failures, and reviving user endpoints.

* Every `EPStatusReport` on `heartbeats` is recorded as that endpoint's last heartbeat.
* One carrying `global_state.error` is a manager's report that a user endpoint could not start
  (protocol.md §4.4): every task still waiting for that endpoint gets a failed result, so the
  submitter hears about it instead of waiting forever.
* A live manager's heartbeat re-sends start commands for its offline UEPs that have tasks
  waiting (see `Dispatcher.revive_user_endpoints`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from endpoint.errors import ProtocolError
from endpoint.protocol.messages import EPStatusReport, unpack_as
from webservice.amqp import AmqpLink, Delivery
from webservice.dispatch import Dispatcher
from webservice.errors import BrokerUnavailable
from webservice.forwarder import REQUEUE_DELAY_S, ResultForwarder
from webservice.liveness import heartbeat_from_report
from webservice.store import Store
from webservice.store.heartbeats import Heartbeat
from webservice.topology import HEARTBEATS_QUEUE, HEARTBEATS_SUFFIX, sender_of

log = logging.getLogger(__name__)

STARTUP_FAILURE_CODE = "EndpointStartupFailure"
PREFETCH = 50


class HeartbeatMonitor:
    def __init__(
        self, link: AmqpLink, store: Store, dispatcher: Dispatcher, forwarder: ResultForwarder
    ) -> None:
        self._link = link
        self._store = store
        self._dispatcher = dispatcher
        self._forwarder = forwarder
        self._jobs: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._link.consume(HEARTBEATS_QUEUE, PREFETCH, self._on_delivery)

    async def stop(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)

    def _on_delivery(self, delivery: Delivery) -> None:
        try:
            self._handle(delivery)
        except Exception:
            # Heartbeats repeat every period: losing one beats a redelivery loop.
            log.exception("dropping a heartbeat that could not be handled")
            AmqpLink.ack(delivery)

    def _handle(self, delivery: Delivery) -> None:
        try:
            report: EPStatusReport = unpack_as(delivery.body, EPStatusReport)
        except ProtocolError as e:
            log.warning("dropping a malformed message on %r: %s", HEARTBEATS_QUEUE, e)
            AmqpLink.ack(delivery)
            return
        sender = sender_of(delivery.routing_key, HEARTBEATS_SUFFIX)
        if sender != str(report.endpoint_id):
            # Topic permissions make the key the sender's own: a report about another
            # endpoint is a forgery (it could mark that endpoint offline or fail its tasks).
            log.warning(
                "dropping a heartbeat from endpoint %s that claims to be %s",
                sender,
                report.endpoint_id,
            )
            AmqpLink.ack(delivery)
            return
        hb = heartbeat_from_report(report, time.time())
        self._store.heartbeats.record(hb)
        if "error" in hb.global_state:
            self._spawn(self._fail_waiting_tasks(hb, delivery))
        elif self._is_live_manager(hb):
            AmqpLink.ack(delivery)
            self._spawn(self._dispatcher.revive_user_endpoints(hb.endpoint_id))
        else:
            AmqpLink.ack(delivery)

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    def _is_live_manager(self, hb: Heartbeat) -> bool:
        if not hb.active or hb.period == 0:
            return False
        endpoint = self._store.endpoints.get(hb.endpoint_id)
        return endpoint is not None and endpoint.is_manager

    async def _fail_waiting_tasks(self, hb: Heartbeat, delivery: Delivery) -> None:
        error = str(hb.global_state.get("error"))
        log.warning("endpoint %s reports a start failure: %s", hb.endpoint_id, error)
        task_ids = self._store.tasks.pending_ids(route_id=hb.endpoint_id)
        message = f"Endpoint {hb.endpoint_id} failed to start:\n{error}"
        try:
            await self._forwarder.fail_tasks(
                task_ids, hb.endpoint_id, STARTUP_FAILURE_CODE, message
            )
        except BrokerUnavailable as e:
            # Requeued, not dropped: the failures are recorded once the broker is back.
            log.warning("could not fail the tasks of %s yet: %s", hb.endpoint_id, e)
            await asyncio.sleep(REQUEUE_DELAY_S)
            AmqpLink.nack(delivery, requeue=True)
            return
        if task_ids:
            log.info("failed %d waiting task(s) of endpoint %s", len(task_ids), hb.endpoint_id)
        AmqpLink.ack(delivery)
