"""One reconnecting AMQP connection on its own I/O thread (pika SelectConnection).

The session consumes one queue (exclusive, manual ack, bounded prefetch) and publishes with
publisher confirms. Other threads talk to it only through the thread-safe methods `publish`,
`ack`, `reject` and `stop`; it reports back through a `SessionEvents` sink. pika exceptions
never leave this module.

Delivery tags are only meaningful on the channel that produced them, so every connection gets
a generation number: an ack for an older generation is dropped (the broker has already
requeued that message and will redeliver it).

The broker cancels a consumer whose queue is deleted; the channel stays open but nothing
arrives. The session reports it (`SessionEvents.on_consumer`), then, with backoff and on a
separate probe channel (a failed declare closes its channel), checks that the queue exists,
re-declares it (and its binding) when it does not, and consumes again on the same channel, so
the delivery tags of the generation stay valid.
"""

from __future__ import annotations

import logging
import random
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


def with_port(url: str, port: int | None) -> str:
    """Rewrite the port of an amqp[s]:// URL (the `amqp_port` config key)."""
    if port is None:
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = netloc[-1]
    # keep an IPv6 literal's brackets; drop any old port
    host = host[: host.index("]") + 1] if host.startswith("[") else host.split(":", 1)[0]
    new = f"{netloc[0]}@{host}:{port}" if len(netloc) == 2 else f"{host}:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=new))


def backoff_delay(attempt: int) -> float:
    """Exponential backoff with full jitter in [0.5, 1.5) of the step, capped."""
    step = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** min(attempt, 16)))
    return float(step * (0.5 + random.random()))


class Session(Protocol):
    """What a loop calls on a session (all thread-safe; `AmqpSession` is the real one)."""

    url: str
    name: str

    def start(self) -> None: ...
    def stop(self, timeout: float = 10.0) -> None: ...
    def publish(self, items: list[Outgoing]) -> None: ...
    def ack(self, generation: int, tag: int, multiple: bool = True) -> None: ...
    def reject(self, generation: int, tag: int) -> None: ...


class SessionEvents(Protocol):
    def on_connected(self, session: Session, generation: int) -> None: ...
    def on_disconnected(self, session: Session, generation: int, reason: str) -> None: ...
    def on_delivery(
        self, generation: int, tag: int, headers: dict[str, Any], body: bytes
    ) -> None: ...
    def on_confirms(self, keys: list[str], ok: bool) -> None: ...
    def on_consumer(self, session: Session, generation: int, consuming: bool, reason: str) -> None:
        """The broker cancelled the session's consumer (`consuming` False), or the session
        consumes its queue again (True). A new connection reports `on_connected` instead."""
        ...


@dataclass(frozen=True)
class MessageProperties:
    """The AMQP properties a command consumer checks (content type, timestamp)."""

    content_type: str | None
    timestamp: int | None
    headers: dict[str, Any]


#: Receives (generation, delivery tag, properties, body) instead of `SessionEvents.on_delivery`.
MessageSink = Callable[[int, int, MessageProperties, bytes], None]


@dataclass(frozen=True)
class Outgoing:
    """One message to publish; `key` comes back in `on_confirms`."""

    key: str
    exchange: str
    routing_key: str
    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    mandatory: bool = True


def connection_parameters(url: str, dead_after: float | None) -> pika.URLParameters:
    """Parameters for `url`; `dead_after` (s) bounds broker silence and blocked publishing.

    Values the URL sets itself (``heartbeat``, ``blocked_connection_timeout``) win: the
    service that hands out the URL knows its broker.
    """
    params = pika.URLParameters(url)
    if dead_after is None:
        return params
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    if "heartbeat" not in query:
        # pika sends a heartbeat every timeout/2 and gives up on a silent peer after ~timeout.
        params.heartbeat = max(2, int(dead_after))
    if "blocked_connection_timeout" not in query:
        params.blocked_connection_timeout = dead_after
    return params


class AmqpSession:
    def __init__(
        self,
        url: str,
        events: SessionEvents,
        *,
        consume_queue: str | None = None,
        prefetch_count: int = 256,
        name: str = "amqp",
        dead_after: float | None = None,
        exclusive: bool = True,
        on_message: MessageSink | None = None,
        consume_exchange: str | None = None,
    ) -> None:
        self.url = url
        # Where a re-declared consume queue is bound, by its own name (None or "": nowhere,
        # the default exchange routes by queue name anyway).
        self._consume_exchange = consume_exchange or None
        # A manager's command queue is consumed non-exclusively and needs the properties.
        self._exclusive = exclusive
        self._on_message = on_message
        self.dead_after = dead_after
        self.name = name
        self._events = events
        self._queue = consume_queue
        self._prefetch = prefetch_count
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._conn: pika.SelectConnection | None = None
        self._consume_ch: pika.channel.Channel | None = None
        self._publish_ch: pika.channel.Channel | None = None
        self._generation = 0
        self._ready = False
        self._attempt = 0
        # consumer-cancel recovery, touched only on the I/O thread
        self._consuming = False
        self._consume_attempt = 0
        # publisher confirm bookkeeping, touched only on the I/O thread
        self._next_tag = 0
        self._in_flight: dict[int, str] = {}
        self._returned: set[str] = set()

    # ---- thread-safe API -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._threadsafe(self._close)
        self._thread.join(timeout)

    def publish(self, items: list[Outgoing]) -> None:
        if items:
            self._threadsafe(lambda: self._publish(items))

    def ack(self, generation: int, tag: int, multiple: bool = True) -> None:
        self._threadsafe(lambda: self._ack(generation, tag, multiple))

    def reject(self, generation: int, tag: int) -> None:
        self._threadsafe(lambda: self._reject(generation, tag))

    # ---- I/O thread ------------------------------------------------------------------
    def _threadsafe(self, fn: Callable[[], None]) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.ioloop.add_callback_threadsafe(fn)
        except Exception:  # the loop is closing; the caller's state says what to resend
            log.debug("%s: dropped a call while the connection is closing", self.name)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._generation += 1
            self._conn = pika.SelectConnection(
                connection_parameters(self.url, self.dead_after),
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
            try:
                self._conn.ioloop.start()
            except Exception as e:
                # pika lets some failures escape its loop (a peer that resets the connection
                # between connect() and getpeername() raises ValueError): a lost connection all
                # the same. Left to end this thread, it would leave the process without AMQP.
                log.exception("%s: the connection failed inside pika", self.name)
                self._connection_lost(e)
            finally:
                # Every connection brings its own IOLoop, whose poller holds a socket pair until
                # closed: left open, each reconnect would leak two descriptors.
                self._conn.ioloop.close()
            if self._stopping.is_set():
                break
            delay = backoff_delay(self._attempt)
            self._attempt += 1
            log.warning("%s: reconnecting in %.1fs (attempt %s)", self.name, delay, self._attempt)
            self._stopping.wait(delay)
        self._conn = None

    def _on_open(self, conn: pika.BaseConnection) -> None:
        conn.channel(on_open_callback=self._on_publish_channel)

    def _on_publish_channel(self, ch: pika.channel.Channel) -> None:
        self._publish_ch = ch
        ch.add_on_close_callback(self._on_channel_closed)
        ch.add_on_return_callback(self._on_return)
        ch.confirm_delivery(self._on_confirm, callback=lambda _f: self._after_confirm_mode())

    def _after_confirm_mode(self) -> None:
        if self._queue is None:
            self._became_ready()
            return
        assert self._conn is not None
        self._conn.channel(on_open_callback=self._on_consume_channel)

    def _on_consume_channel(self, ch: pika.channel.Channel) -> None:
        self._consume_ch = ch
        ch.add_on_close_callback(self._on_channel_closed)
        ch.add_on_cancel_callback(self._on_consumer_cancelled)
        ch.basic_qos(prefetch_count=self._prefetch, callback=lambda _f: self._consume(ch))

    def _consume(self, ch: pika.channel.Channel) -> None:
        assert self._queue is not None
        gen = self._generation

        def on_message(
            _ch: Any, method: pika.spec.Basic.Deliver, props: pika.BasicProperties, body: bytes
        ) -> None:
            if self._on_message is not None:
                found = MessageProperties(props.content_type, props.timestamp, props.headers or {})
                self._on_message(gen, method.delivery_tag, found, body)
                return
            self._events.on_delivery(gen, method.delivery_tag, props.headers or {}, body)

        ch.basic_consume(
            self._queue,
            on_message,
            exclusive=self._exclusive,
            callback=lambda _f: self._consuming_again() if self._ready else self._became_ready(),
        )

    def _became_ready(self) -> None:
        self._ready = True
        self._consuming = True
        self._attempt = 0
        self._consume_attempt = 0
        self._next_tag = 0
        self._in_flight.clear()
        self._returned.clear()
        log.info("%s: connected (generation %s)", self.name, self._generation)
        self._events.on_connected(self, self._generation)

    # ---- consumer cancelled by the broker (its queue was deleted) -------------------------
    def _on_consumer_cancelled(self, _frame: pika.frame.Method) -> None:
        if self._stopping.is_set() or not self._consuming:
            return
        self._consuming = False
        reason = f"the broker cancelled the consumer of queue {self._queue} (queue deleted?)"
        log.error("%s: %s; no deliveries until it is consumed again", self.name, reason)
        self._events.on_consumer(self, self._generation, False, reason)
        self._retry_consume()

    def _retry_consume(self) -> None:
        conn = self._conn
        if conn is None or self._stopping.is_set():
            return
        delay = backoff_delay(self._consume_attempt)
        self._consume_attempt += 1
        gen = self._generation
        conn.ioloop.call_later(delay, lambda: self._probe(gen, passive=True))

    def _can_reconsume(self, generation: int) -> bool:
        """Still worth it: same connection, its consume channel open, not yet consuming."""
        ch, conn = self._consume_ch, self._conn
        return (
            generation == self._generation
            and not self._stopping.is_set()
            and not self._consuming
            and conn is not None
            and conn.is_open
            and ch is not None
            and ch.is_open
        )

    def _probe(self, generation: int, passive: bool) -> None:
        """Declare the queue on a throwaway channel: passively (does it exist?), or for real
        (re-create it and bind it) after a passive declare found it missing."""
        if not self._can_reconsume(generation):
            return
        assert self._conn is not None and self._queue is not None
        queue, exchange = self._queue, self._consume_exchange
        finished = threading.Event()  # set once the probe succeeded: its own close is no failure

        def on_close(_ch: pika.channel.Channel, why: BaseException) -> None:
            if not finished.is_set():
                self._probe_failed(generation, passive, why)

        def on_open(ch: pika.channel.Channel) -> None:
            ch.add_on_close_callback(on_close)
            ch.queue_declare(queue, passive=passive, durable=True, callback=lambda _f: bind(ch))

        def bind(ch: pika.channel.Channel) -> None:
            if passive or exchange is None:
                done(ch)
            else:
                ch.queue_bind(queue, exchange, routing_key=queue, callback=lambda _f: done(ch))

        def done(ch: pika.channel.Channel) -> None:
            finished.set()
            ch.close()
            consume_ch = self._consume_ch
            if self._can_reconsume(generation) and consume_ch is not None:
                self._consume(consume_ch)

        self._conn.channel(on_open_callback=on_open)

    def _probe_failed(self, generation: int, passive: bool, why: BaseException) -> None:
        if not self._can_reconsume(generation):
            return
        missing = isinstance(why, pika.exceptions.ChannelClosedByBroker) and why.reply_code == 404
        if passive and missing:
            log.warning("%s: queue %s is gone; declaring it again", self.name, self._queue)
            self._probe(generation, passive=False)
            return
        log.warning("%s: cannot consume %s yet: %s", self.name, self._queue, why)
        self._retry_consume()

    def _consuming_again(self) -> None:
        self._consuming = True
        self._consume_attempt = 0
        log.info("%s: consuming %s again", self.name, self._queue)
        self._events.on_consumer(self, self._generation, True, "")

    def _on_open_error(self, conn: pika.BaseConnection, err: BaseException) -> None:
        refused = (
            pika.exceptions.ProbableAuthenticationError,
            pika.exceptions.ProbableAccessDeniedError,
        )
        if isinstance(err, refused):
            # The service rotates an account at every registration and start, and deletes it
            # with its endpoint: say which, not just "cannot connect".
            log.error(
                "%s: the broker refused this endpoint's account: it was replaced (the endpoint "
                "was registered again, perhaps elsewhere) or revoked (deleted). A user endpoint "
                "gets fresh credentials from its manager; restart a single-user endpoint to "
                "register again",
                self.name,
            )
        else:
            # Some of pika's connection errors stringify to "": the class name still says what.
            log.warning("%s: cannot connect to the broker: %s", self.name, str(err) or repr(err))
        conn.ioloop.stop()

    def _on_closed(self, conn: pika.BaseConnection, reason: BaseException) -> None:
        self._connection_lost(reason)
        conn.ioloop.stop()

    def _connection_lost(self, reason: BaseException) -> None:
        was_ready, self._ready = self._ready, False
        self._consuming = False
        self._consume_ch = self._publish_ch = None
        lost = list(self._in_flight.values())
        self._in_flight.clear()
        if not self._stopping.is_set():
            log.warning("%s: connection closed: %s", self.name, reason)
        if was_ready:
            self._events.on_disconnected(self, self._generation, str(reason))
        if lost:
            self._events.on_confirms(lost, False)

    def _on_channel_closed(self, ch: pika.channel.Channel, reason: BaseException) -> None:
        # Any channel loss (missing queue, exclusive-consumer conflict, publish to a missing
        # exchange) restarts the whole connection with backoff: one recovery path.
        if not self._stopping.is_set():
            log.warning("%s: channel %s closed: %s", self.name, ch.channel_number, reason)
        self._close()

    def _close(self) -> None:
        conn = self._conn
        if conn is not None and conn.is_open:
            conn.close()
        elif conn is not None and not conn.is_closing:
            conn.ioloop.stop()

    def _publish(self, items: list[Outgoing]) -> None:
        ch = self._publish_ch
        if ch is None or not ch.is_open:
            self._events.on_confirms([i.key for i in items], False)
            return
        for item in items:
            props = dict(item.properties)
            props["message_id"] = item.key
            try:
                ch.basic_publish(
                    item.exchange,
                    item.routing_key,
                    item.body,
                    pika.BasicProperties(**props),
                    mandatory=item.mandatory,
                )
            except (pika.exceptions.AMQPError, TypeError) as e:
                log.warning("%s: publish of %s failed: %s", self.name, item.key, e)
                self._events.on_confirms([item.key], False)
                continue
            self._next_tag += 1
            self._in_flight[self._next_tag] = item.key

    def _on_return(
        self, _ch: Any, method: pika.spec.Basic.Return, props: pika.BasicProperties, _b: bytes
    ) -> None:
        log.warning(
            "%s: message %s returned unroutable (%s %s)",
            self.name,
            props.message_id,
            method.reply_code,
            method.reply_text,
        )
        if props.message_id:
            self._returned.add(props.message_id)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        tag = method.delivery_tag
        if method.multiple:
            tags = [t for t in self._in_flight if t <= tag]
        else:
            tags = [tag] if tag in self._in_flight else []
        keys = [self._in_flight.pop(t) for t in tags]
        good = [k for k in keys if ok and k not in self._returned]
        bad = [k for k in keys if not ok or k in self._returned]
        self._returned.difference_update(keys)
        if good:
            self._events.on_confirms(good, True)
        if bad:
            self._events.on_confirms(bad, False)

    def _ack(self, generation: int, tag: int, multiple: bool) -> None:
        ch = self._consume_ch
        if generation != self._generation or ch is None or not ch.is_open:
            return
        ch.basic_ack(tag, multiple=multiple)

    def _reject(self, generation: int, tag: int) -> None:
        ch = self._consume_ch
        if generation != self._generation or ch is None or not ch.is_open:
            return
        ch.basic_nack(tag, multiple=False, requeue=False)
