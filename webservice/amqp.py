"""The service's one AMQP connection: pika's asyncio adapter bridged to asyncio futures.

Why pika and not aio-pika: publishing is the hot path (every task, every result). Measured here,
aio-pika/aiormq spend ~100 µs of CPU per confirmed publish, pika ~20 µs, because pika writes a
publish straight into its transport buffer and the broker's confirms come back as a few
`multiple` acks. The price is this small adapter: futures for RPCs and confirms, and a reconnect
loop that re-runs the `on_ready` hooks (topology) and restarts the consumers.

Channels: `ctl` for declares (a failing declare closes only it), `pub` in confirm mode for
publishes, one per consumer (its own prefetch). Only this module imports pika.exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel
from pika.spec import Basic

from webservice.errors import BrokerUnavailable, Unroutable

log = logging.getLogger(__name__)

#: Seconds to wait for the broker to answer one RPC (declare, qos, open).
RPC_TIMEOUT_S = 30.0
RECONNECT_MAX_DELAY_S = 10.0


@dataclass(frozen=True)
class Delivery:
    """One message from a consumer; settle it with `AmqpLink.ack`/`nack`."""

    channel: Channel
    tag: int
    routing_key: str
    properties: pika.BasicProperties
    body: bytes


DeliveryCallback = Callable[[Delivery], None]
ReadyHook = Callable[[], Awaitable[None]]


@dataclass
class _Consumer:
    queue: str
    prefetch: int
    callback: DeliveryCallback
    channel: Channel | None = None
    consumer_tag: str | None = None


@dataclass
class _Confirms:
    """Publisher-confirm bookkeeping of one `pub` channel (tags restart at 1 per channel)."""

    next_tag: int = 0
    waiting: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    # Tags in publish order, for `multiple` confirms; entries settled singly are skipped lazily.
    order: deque[int] = field(default_factory=deque)
    # Mandatory publishes: tag -> message_id, and the ids the broker returned (unroutable).
    # The broker sends a publish's basic.return before its basic.ack, so a return is known
    # by the time its confirm settles it.
    mandatory: dict[int, str] = field(default_factory=dict)
    returned: set[str] = field(default_factory=set)

    def add(self, fut: asyncio.Future[None], message_id: str | None = None) -> None:
        self.next_tag += 1
        self.waiting[self.next_tag] = fut
        self.order.append(self.next_tag)
        if message_id is not None:
            self.mandatory[self.next_tag] = message_id

    def settle(self, tag: int, multiple: bool, error: Exception | None) -> None:
        if not multiple:
            self._settle_one(tag, error)
            return
        while self.order and self.order[0] <= tag:
            self._settle_one(self.order.popleft(), error)

    def _settle_one(self, tag: int, error: Exception | None) -> None:
        message_id = self.mandatory.pop(tag, None)
        if error is None and message_id is not None and message_id in self.returned:
            self.returned.discard(message_id)
            error = Unroutable(f"no queue is bound for message {message_id}")
        _resolve(self.waiting.pop(tag, None), error)

    def fail_all(self, error: Exception) -> None:
        for fut in self.waiting.values():
            _resolve(fut, error)
        self.waiting.clear()
        self.order.clear()
        self.mandatory.clear()
        self.returned.clear()


def _resolve(
    fut: asyncio.Future[Any] | None, error: BaseException | None, value: Any = None
) -> None:
    if fut is None or fut.done():
        return
    if error is None:
        fut.set_result(value)
    else:
        fut.set_exception(error)


# pika ships no types, so its base class is Any to mypy: nothing to check the subclass against.
class _CoalescingConnection(AsyncioConnection):  # type: ignore[misc]
    """An AsyncioConnection that joins the frames it writes into few large send() calls.

    pika hands its transport one write per frame, three per publish, and the transport sends
    each with its own send(2): 3,000 syscalls for a 1,000-task submit, which measured as the
    largest single cost of the whole request. Frames are joined until the event loop gets a
    turn, or until FLUSH_BYTES are waiting, so the broker starts on a big batch early.
    """

    FLUSH_BYTES = 64 * 1024

    def __init__(self, params: pika.URLParameters, loop: asyncio.AbstractEventLoop, **kw: Any):
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._out_loop = loop
        super().__init__(params, custom_ioloop=loop, **kw)

    def _adapter_emit_data(self, data: bytes) -> None:
        if not self._out:
            self._out_loop.call_soon(self._flush_out)
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes >= self.FLUSH_BYTES:
            self._flush_out()

    def _flush_out(self) -> None:
        data = b"".join(self._out)
        self._out.clear()
        self._out_bytes = 0
        if data and self._transport is not None:
            super()._adapter_emit_data(data)


def _cancel(channel: Channel, consumer_tag: str, callback: Callable[[Any], None]) -> None:
    channel.basic_cancel(consumer_tag, callback=callback)


class AmqpLink:
    """Connect, declare, publish with confirms, consume; reconnects by itself."""

    def __init__(self, url: str, connection_name: str = "compute-webservice") -> None:
        self._params = pika.URLParameters(url)
        self._params.client_properties = {"connection_name": connection_name}
        self._conn: AsyncioConnection | None = None
        self._ctl: Channel | None = None
        self._pub: Channel | None = None
        self._confirms = _Confirms()
        self._waiters: set[asyncio.Future[Any]] = set()
        self._consumers: list[_Consumer] = []
        self._ready_hooks: list[ReadyHook] = []
        self._ready = asyncio.Event()
        self._closing = False
        self._connecting = False
        self._reconnecting: asyncio.Task[None] | None = None
        # Strong references: the event loop keeps only weak ones to running tasks.
        self._background: set[asyncio.Task[None]] = set()

    # --- lifecycle ------------------------------------------------------------------------

    def on_ready(self, hook: ReadyHook) -> None:
        """Run `hook` after every (re)connect, before consumers start (declare topology)."""
        self._ready_hooks.append(hook)

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    async def start(self, wait_s: float) -> None:
        """Connect, waiting up to `wait_s` for the broker to come up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        delay = 0.25
        while True:
            try:
                await self._connect_once()
                return
            except BrokerUnavailable as e:
                if loop.time() + delay > deadline:
                    raise
                log.info("broker not reachable yet (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        self._closing = True
        for task in [self._reconnecting, *self._background]:
            if task is not None:
                task.cancel()
        conn, self._conn = self._conn, None
        self._ready.clear()
        self._fail_pending(BrokerUnavailable("the service is shutting down"))
        if conn is not None and conn.is_open:
            closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            conn.add_on_close_callback(lambda *_: _resolve(closed, None))
            conn.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(closed, 5)

    async def _connect_once(self) -> None:
        self._connecting = True
        try:
            await self._connect()
        except BrokerUnavailable:
            self._drop_connection()
            raise
        finally:
            self._connecting = False

    def _drop_connection(self) -> None:
        # Forget it first, so its close callback sees a stale connection and stays quiet.
        conn, self._conn = self._conn, None
        self._ctl = self._pub = None
        if conn is not None and conn.is_open:
            conn.close()

    async def _connect(self) -> None:
        self._conn = await self._open_connection()
        self._ctl = await self._open_channel(self._on_ctl_closed)
        self._pub = await self._open_pub_channel()
        for hook in self._ready_hooks:
            await hook()
        for consumer in self._consumers:
            await self._start_consumer(consumer)
        self._ready.set()
        log.info("AMQP connected to %s:%s", self._params.host, self._params.port)

    async def _open_connection(self) -> AsyncioConnection:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[AsyncioConnection] = loop.create_future()

        def on_error(_conn: Any, exc: BaseException) -> None:
            _resolve(opened, BrokerUnavailable(f"cannot connect to the broker: {exc!r}"))

        _CoalescingConnection(
            self._params,
            loop,
            on_open_callback=lambda conn: _resolve(opened, None, conn),
            on_open_error_callback=on_error,
            on_close_callback=self._on_connection_closed,
        )
        return await self._await(opened)

    async def _open_channel(self, on_close: Callable[[Channel, BaseException], None]) -> Channel:
        conn = self._require_conn()
        opened: asyncio.Future[Channel] = asyncio.get_running_loop().create_future()
        conn.channel(on_open_callback=lambda ch: _resolve(opened, None, ch))
        channel = await self._await(opened)
        channel.add_on_close_callback(on_close)
        return channel

    async def _open_pub_channel(self) -> Channel:
        channel = await self._open_channel(self._on_pub_closed)
        self._confirms = _Confirms()
        channel.add_on_return_callback(self._on_return)
        await self._rpc(lambda cb: channel.confirm_delivery(self._on_confirm, callback=cb))
        return channel

    def _require_conn(self) -> AsyncioConnection:
        if self._conn is None or not self._conn.is_open:
            raise BrokerUnavailable("not connected to the broker")
        return self._conn

    # --- failure handling -----------------------------------------------------------------

    def _on_connection_closed(self, conn: AsyncioConnection, reason: BaseException) -> None:
        if conn is not self._conn:
            return
        self._conn = self._ctl = self._pub = None
        self._ready.clear()
        for consumer in self._consumers:
            consumer.channel = None
        self._fail_pending(BrokerUnavailable(f"broker connection lost: {reason!r}"))
        # While a connect is in progress its caller retries; otherwise start a reconnect loop.
        if not self._closing and not self._connecting:
            log.warning("AMQP connection lost (%r); reconnecting", reason)
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    def _fail_pending(self, error: BrokerUnavailable) -> None:
        self._confirms.fail_all(error)
        self._fail_waiters(error)

    async def _reconnect(self) -> None:
        delay = 0.5
        while not self._closing:
            # Jitter: many services restarting against one broker must not stampede it.
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            try:
                await self._connect_once()
                return
            except BrokerUnavailable as e:
                log.warning("AMQP reconnect failed: %s", e)
                delay = min(delay * 2, RECONNECT_MAX_DELAY_S)

    def _on_ctl_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self._ctl or self._closing:
            return
        self._ctl = None
        log.warning("AMQP control channel closed: %r", reason)
        self._fail_waiters(BrokerUnavailable(f"broker refused: {reason}"))
        self._reopen_later(self._reopen_ctl)

    def _on_pub_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self._pub or self._closing:
            return
        self._pub = None
        log.warning("AMQP publish channel closed: %r", reason)
        self._confirms.fail_all(BrokerUnavailable(f"publish channel closed: {reason}"))
        self._reopen_later(self._reopen_pub)

    def _fail_waiters(self, error: BrokerUnavailable) -> None:
        for fut in list(self._waiters):
            _resolve(fut, error)

    def _reopen_later(self, reopen: Callable[[], Awaitable[None]]) -> None:
        if self._closing or self._conn is None or not self._conn.is_open:
            return  # the connection handler reconnects everything
        task = asyncio.get_running_loop().create_task(self._guarded(reopen))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _guarded(self, reopen: Callable[[], Awaitable[None]]) -> None:
        try:
            await reopen()
        except BrokerUnavailable as e:
            log.warning("could not reopen an AMQP channel: %s", e)

    async def _reopen_ctl(self) -> None:
        self._ctl = await self._open_channel(self._on_ctl_closed)

    async def _reopen_pub(self) -> None:
        self._pub = await self._open_pub_channel()

    # --- RPCs -----------------------------------------------------------------------------

    async def _await(self, fut: asyncio.Future[Any], timeout: float = RPC_TIMEOUT_S) -> Any:
        self._waiters.add(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError as e:
            raise BrokerUnavailable("the broker did not answer in time") from e
        finally:
            self._waiters.discard(fut)

    async def _rpc(self, call: Callable[[Callable[[Any], None]], Any]) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            call(lambda frame: _resolve(fut, None, frame))
        except pika.exceptions.AMQPError as e:
            raise BrokerUnavailable(f"broker request failed: {e!r}") from e
        return await self._await(fut)

    def _control(self) -> Channel:
        if self._ctl is None or not self._ctl.is_open:
            raise BrokerUnavailable("not connected to the broker")
        return self._ctl

    async def declare_exchange(self, name: str, kind: str) -> None:
        ch = self._control()
        await self._rpc(
            lambda cb: ch.exchange_declare(name, exchange_type=kind, durable=True, callback=cb)
        )

    async def declare_queue(self, name: str) -> None:
        ch = self._control()
        await self._rpc(lambda cb: ch.queue_declare(name, durable=True, callback=cb))

    async def bind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        ch = self._control()
        await self._rpc(lambda cb: ch.queue_bind(queue, exchange, routing_key, callback=cb))

    async def delete_queue(self, name: str) -> None:
        ch = self._control()
        await self._rpc(lambda cb: ch.queue_delete(name, callback=cb))

    # --- publishing -----------------------------------------------------------------------

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        mandatory: bool = False,
    ) -> asyncio.Future[None]:
        """Send now; the future resolves when the broker confirms (or fails with 503).

        `mandatory` needs a unique `properties.message_id`: a message no queue takes then
        fails its future with `Unroutable` instead of vanishing (confirmed all the same).
        """
        ch = self._pub
        if ch is None or not ch.is_open or not self._ready.is_set():
            raise BrokerUnavailable("not connected to the broker")
        if mandatory and not properties.message_id:
            raise ValueError("a mandatory publish needs a message_id")
        try:
            ch.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
        except pika.exceptions.AMQPError as e:
            raise BrokerUnavailable(f"publish failed: {e!r}") from e
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirms.add(fut, properties.message_id if mandatory else None)
        return fut

    def _on_return(
        self, _ch: Channel, method: Any, properties: pika.BasicProperties, _body: bytes
    ) -> None:
        log.warning(
            "the broker returned a message for %r/%r: %s",
            method.exchange,
            method.routing_key,
            method.reply_text,
        )
        if properties.message_id:
            self._confirms.returned.add(properties.message_id)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        error = None
        if not isinstance(method, Basic.Ack):
            error = BrokerUnavailable("the broker refused (nacked) a message")
        self._confirms.settle(method.delivery_tag, method.multiple, error)

    # --- consuming ------------------------------------------------------------------------

    async def consume(self, queue: str, prefetch: int, callback: DeliveryCallback) -> None:
        """Deliver every message of `queue` to `callback`, now and after each reconnect."""
        consumer = _Consumer(queue, prefetch, callback)
        self._consumers.append(consumer)
        if self._ready.is_set():
            await self._start_consumer(consumer)

    async def _start_consumer(self, c: _Consumer) -> None:
        channel = await self._open_channel(
            lambda ch, reason: self._on_consumer_closed(c, ch, reason)
        )
        await self._rpc(lambda cb: channel.basic_qos(prefetch_count=c.prefetch, callback=cb))

        def on_message(ch: Channel, method: Any, props: pika.BasicProperties, body: bytes) -> None:
            c.callback(Delivery(ch, method.delivery_tag, method.routing_key, props, body))

        c.consumer_tag = channel.basic_consume(c.queue, on_message, auto_ack=False)
        c.channel = channel

    def _on_consumer_closed(self, c: _Consumer, channel: Channel, reason: BaseException) -> None:
        if channel is not c.channel or self._closing:
            return
        c.channel = None
        log.warning("AMQP consumer of %s closed: %r", c.queue, reason)
        self._reopen_later(lambda: self._restart_consumer(c))

    async def _restart_consumer(self, c: _Consumer) -> None:
        await asyncio.sleep(1.0)
        if c.channel is None and self._conn is not None and self._conn.is_open:
            await self._start_consumer(c)

    async def stop_consuming(self) -> None:
        """Cancel every consumer (unacked deliveries go back to their queues on close)."""
        consumers, self._consumers = self._consumers, []
        for c in consumers:
            if c.channel is not None and c.channel.is_open and c.consumer_tag:
                with contextlib.suppress(BrokerUnavailable):
                    await self._rpc(functools.partial(_cancel, c.channel, c.consumer_tag))

    @staticmethod
    def ack(delivery: Delivery, multiple: bool = False) -> None:
        """Ack; a delivery of a channel that has since closed is simply redelivered later."""
        if delivery.channel.is_open:
            delivery.channel.basic_ack(delivery.tag, multiple=multiple)

    @staticmethod
    def nack(delivery: Delivery, requeue: bool = True) -> None:
        if delivery.channel.is_open:
            delivery.channel.basic_nack(delivery.tag, requeue=requeue)
