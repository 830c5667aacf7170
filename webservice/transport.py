"""The HTTP transport under uvicorn: slow clients, a connection cap, running out of descriptors.

uvicorn (h11) has a keep-alive timeout, but no deadline for a request's headers: a client that
opens a connection and sends nothing, or half a request line, holds its descriptor forever.
Its `limit_concurrency` answers 503 (which the SDK retries) but still accepts every connection.
And asyncio (3.11) answers an `accept` that fails with EMFILE by logging a traceback and
scheduling a retry *for every remaining slot of the listen backlog*: with the descriptors gone
that became a busy loop writing megabytes of log per second. So:

* `guarded_protocol` - h11 plus a header deadline, and a cap on open connections (kept under
  the descriptor limit) that closes the oldest connection still sending headers to make room;
* `EdgeEventLoop` - an EMFILE on `accept` pauses accepting for a second, logged at most once
  per `RateLimitedLog` period;
* `RateLimitedLog` - one line per kind per period, with the count of lines left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import time
from collections.abc import Callable
from typing import Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from webservice.limits import Limits

log = logging.getLogger(__name__)

#: Descriptors kept free for everything but HTTP connections (broker, SQLite, logs, ...).
RESERVED_DESCRIPTORS = 128
#: How long accepting pauses after the process ran out of descriptors.
ACCEPT_RETRY_S = 1.0
_ACCEPT_EXHAUSTED = "socket.accept() out of system resource"


class RateLimitedLog:
    """At most one record per key and period; the next one says how many were left out."""

    def __init__(self, logger: logging.Logger, period_s: float = 10.0) -> None:
        self._logger = logger
        self._period_s = period_s
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._period_s) < self._period_s:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return
        self._last[key] = now
        left_out = self._left_out.pop(key, 0)
        if left_out:
            msg += " (%d similar lines left out)"
            args = (*args, left_out)
        self._logger.warning(msg, *args)


edge_log = RateLimitedLog(log)


def raise_descriptor_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65_536 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(limits: Limits) -> int:
    """`limits.max_connections`, lowered to fit under the descriptor limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return limits.max_connections
    return max(8, min(limits.max_connections, soft - RESERVED_DESCRIPTORS))


class GuardedH11Protocol(H11Protocol):
    """h11 with a header deadline and a connection cap; `guarded_protocol` makes one per server."""

    limits: ClassVar[Limits] = Limits()
    cap: ClassVar[int] = Limits().max_connections
    #: Connections still sending their request headers, oldest first (dicts keep order).
    waiting: ClassVar[dict[GuardedH11Protocol, None]] = {}

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        super().connection_made(transport)
        if len(self.connections) > self.cap and not self._make_room():
            edge_log.warning("cap", "%d HTTP connections open: refusing new ones", self.cap)
            transport.abort()
            return
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._await_headers()  # the next request of a keep-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._headers_arrived()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self.waiting[self] = None
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._too_slow)

    def _headers_arrived(self) -> None:
        self.waiting.pop(self, None)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        self.waiting.pop(self, None)
        if self.conn.their_state is h11.IDLE:
            edge_log.warning(
                "headers",
                "closed a connection that sent no complete request headers in %ss",
                self.limits.header_timeout_s,
            )
            self.transport.abort()

    def _make_room(self) -> bool:
        """Close the oldest connection still waiting for headers; False when none is."""
        for victim in self.waiting:
            victim._headers_arrived()
            edge_log.warning(
                "evict", "%d HTTP connections open: closed the slowest to make room", self.cap
            )
            victim.transport.abort()
            return True
        return False


def guarded_protocol(limits: Limits) -> type[GuardedH11Protocol]:
    """A protocol class for one server: its limits, its cap, its own waiting list."""
    attrs = {"limits": limits, "cap": connection_cap(limits), "waiting": {}}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attrs)


class _AcceptExhausted(Exception):
    pass


class EdgeEventLoop(asyncio.SelectorEventLoop):
    """A selector loop whose `accept` backs off once when the descriptors run out.

    asyncio 3.11 keeps calling `accept` for the rest of the backlog after an EMFILE, logging
    a traceback and scheduling one more retry each time. Here the first EMFILE of a round ends
    it: one (rate-limited) log line, accepting paused for ACCEPT_RETRY_S.
    """

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_EXHAUSTED:
            raise _AcceptExhausted(context.get("exception"))
        super().call_exception_handler(context)

    def _accept_connection(
        self, protocol_factory: Callable[[], asyncio.Protocol], sock: socket.socket, *args: Any
    ) -> None:
        accept: Callable[..., None] = getattr(super(), "_accept_connection")  # noqa: B009
        try:
            accept(protocol_factory, sock, *args)
        except _AcceptExhausted as e:
            edge_log.warning("emfile", "cannot accept connections: %s; pausing", e)
            remove_reader: Callable[[int], bool] = getattr(self, "_remove_reader")  # noqa: B009
            start: Callable[..., None] = getattr(self, "_start_serving")  # noqa: B009
            remove_reader(sock.fileno())
            self.call_later(ACCEPT_RETRY_S, start, protocol_factory, sock, *args)
