"""A loopback TCP proxy in front of the private RabbitMQ that can drop or stall connections.

Reliability case 2 asks for broker faults that stopping the RabbitMQ app cannot produce: a
connection that dies abruptly (reset, no AMQP close handshake) and a network partition, where
TCP stays up but no byte moves and only the peers' own timers (AMQP heartbeats) notice.
Endpoints are handed this proxy's address; the web service and the checker talk to the broker
directly, so only the endpoint's side of the network fails.

One thread runs a `select` loop over every socket; `drop`, `stall` and `close` are handed to it
and return once they are in effect, so a test knows the fault is there when the call returns.
Only loopback addresses are ever listened on or connected to.
"""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from endpoint.amqp import with_port
from webservice.broker import free_port

LISTEN_HOST = "127.0.0.1"
CHUNK = 65536
# Stop reading a side while this much is waiting for the other: memory stays bounded and the
# sender feels TCP backpressure, as it would on a slow link.
MAX_BUFFERED = 4 * CHUNK
# How long a side that sent EOF may take to have its last bytes delivered before we reset.
FLUSH_GRACE_S = 5.0
# The loop wakes at least this often to end stalls and refusals on time.
TICK_S = 0.2
CONNECT_TIMEOUT_S = 5.0


def _loopback(host: str) -> str:
    """`host` if it is a loopback address, else ValueError: the proxy never leaves the machine."""
    name = "127.0.0.1" if host == "localhost" else host
    if not ipaddress.ip_address(name).is_loopback:
        raise ValueError(f"the fault proxy only talks to loopback, not {host!r}")
    return name


def _reset(sock: socket.socket | None) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, as when a middlebox or a host dies."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass(eq=False)
class _Pipe:
    """One proxied connection. `upstream` is None while it is black-holed (accepted during a
    stall): the broker only hears of it once the stall ends."""

    client: socket.socket
    upstream: socket.socket | None = None
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    # Set when one side sent EOF: deliver what is buffered, then close both sides.
    closing_since: float | None = None

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]

    def peer_buffer(self, sock: socket.socket) -> bytearray:
        """The buffer that bytes read from `sock` go to."""
        return self.to_upstream if sock is self.client else self.to_client

    def own_buffer(self, sock: socket.socket) -> bytearray:
        """The buffer waiting to be written to `sock`."""
        return self.to_client if sock is self.client else self.to_upstream

    def flushed(self) -> bool:
        return not self.to_upstream and not self.to_client

    def reset(self) -> None:
        _reset(self.client)
        _reset(self.upstream)

    def close(self) -> None:
        for sock in self.sockets():
            sock.close()


class BrokerProxy:
    """Forward 127.0.0.1:`port` to the broker at `upstream_host`:`upstream_port`."""

    def __init__(
        self, upstream_port: int, upstream_host: str = "127.0.0.1", port: int | None = None
    ) -> None:
        self.upstream = (_loopback(upstream_host), upstream_port)
        self.port = port or free_port()
        # For tests and logs; written by the loop only.
        self.accepted = 0
        self.refused = 0
        #: time.monotonic() of the latest accepted connection: when a peer's heartbeat clock began.
        self.last_accepted: float | None = None
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LISTEN_HOST, self.port))
        self._listener.listen(64)
        self._listener.setblocking(False)
        # A byte on this pair wakes the loop for a command.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._commands: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._pipes: list[_Pipe] = []
        self._refuse_until = 0.0
        self._stall_until: float | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{self.port}")
        self._thread.daemon = True
        self._thread.start()

    # ---- the faults (any thread) ------------------------------------------------------------
    def url_for(self, amqp_url: str) -> str:
        """`amqp_url` with this proxy's port: what endpoints are handed instead."""
        return with_port(amqp_url, self.port)

    def drop(self, refuse_for: float) -> None:
        """Reset every live connection now; reset new ones for `refuse_for` seconds."""

        def apply() -> None:
            for pipe in self._pipes:
                pipe.reset()
            self._pipes.clear()
            self._refuse_until = time.monotonic() + refuse_for

        self._call(apply)

    def stall(self, seconds: float) -> None:
        """Move no byte on any connection for `seconds`; new ones are accepted but silent.

        When it ends, every connection resumes with the bytes that were held: a partition does
        not tear TCP down, and bytes sent into it are retransmitted and delivered once it heals.
        A side that gave up meanwhile (its heartbeat timer closed the socket) shows up only then,
        as EOF or a reset, and the proxy passes that on, as the real peer's kernel would. Dropping
        everything at the end instead would hide the interesting case: a peer that never noticed
        the partition and must carry on with its old connection.
        """

        def apply() -> None:
            self._stall_until = time.monotonic() + seconds

        self._call(apply)

    def close(self) -> None:
        """Reset every connection, stop listening and end the loop thread."""
        if self._thread.is_alive():

            def apply() -> None:
                self._stopping = True

            self._call(apply)
            self._thread.join(10)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _call(self, fn: Callable[[], None]) -> None:
        done = threading.Event()
        self._commands.put((fn, done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if not done.wait(10):
            raise TimeoutError("the fault proxy loop did not answer")

    # ---- the loop (its own thread) ------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._step()
        finally:
            for pipe in self._pipes:
                pipe.reset()
            self._pipes.clear()

    def _step(self) -> None:
        self._run_commands()
        self._end_stall_if_due()
        readable, writable = self._interest()
        timeout = TICK_S
        if self._stall_until is not None:
            timeout = max(0.0, min(timeout, self._stall_until - time.monotonic()))
        r, w, _ = select.select(readable, writable, [], timeout)
        for sock in r:
            self._on_readable(sock)
        for sock in w:
            self._on_writable(sock)
        self._finish_closing()

    def _run_commands(self) -> None:
        while True:
            try:
                fn, done = self._commands.get_nowait()
            except queue.Empty:
                return
            fn()
            done.set()

    def _end_stall_if_due(self) -> None:
        if self._stall_until is None or time.monotonic() < self._stall_until:
            return
        self._stall_until = None
        # Black-holed connections finally reach the broker; a client that gave up has sent
        # EOF, which is read and passed on like any other.
        for pipe in list(self._pipes):
            if pipe.upstream is None:
                self._connect(pipe)

    def _interest(self) -> tuple[list[socket.socket], list[socket.socket]]:
        readable: list[socket.socket] = [self._listener, self._wake_r]
        writable: list[socket.socket] = []
        if self._stall_until is not None:
            return readable, writable  # a partition: nobody reads or writes
        for pipe in self._pipes:
            for sock in pipe.sockets():
                if pipe.closing_since is None and len(pipe.peer_buffer(sock)) < MAX_BUFFERED:
                    readable.append(sock)
                if pipe.own_buffer(sock):
                    writable.append(sock)
        return readable, writable

    def _pipe_of(self, sock: socket.socket) -> _Pipe | None:
        for pipe in self._pipes:
            if sock is pipe.client or sock is pipe.upstream:
                return pipe
        return None  # reset earlier in this step

    def _on_readable(self, sock: socket.socket) -> None:
        if sock is self._listener:
            self._accept()
            return
        if sock is self._wake_r:
            with contextlib.suppress(BlockingIOError):
                sock.recv(CHUNK)
            return
        pipe = self._pipe_of(sock)
        if pipe is None:
            return
        try:
            data = sock.recv(CHUNK)
        except OSError:
            self._abort(pipe)  # a reset on one side becomes a reset on the other
            return
        if data:
            pipe.peer_buffer(sock).extend(data)
        elif pipe.closing_since is None:
            pipe.closing_since = time.monotonic()

    def _on_writable(self, sock: socket.socket) -> None:
        pipe = self._pipe_of(sock)
        if pipe is None:
            return
        buf = pipe.own_buffer(sock)
        try:
            sent = sock.send(buf)
        except BlockingIOError:
            return
        except OSError:
            self._abort(pipe)
            return
        del buf[:sent]

    def _finish_closing(self) -> None:
        if self._stall_until is not None:
            return  # not even a FIN crosses a partition
        now = time.monotonic()
        for pipe in list(self._pipes):
            if pipe.closing_since is None:
                continue
            if pipe.flushed():
                self._pipes.remove(pipe)
                pipe.close()
            elif now - pipe.closing_since > FLUSH_GRACE_S:
                self._abort(pipe)

    def _accept(self) -> None:
        try:
            client, _addr = self._listener.accept()
        except BlockingIOError:
            return
        if time.monotonic() < self._refuse_until:
            self.refused += 1
            _reset(client)  # as a dead broker host would: accepted by nobody, reset at once
            return
        self.accepted += 1
        self.last_accepted = time.monotonic()
        client.setblocking(False)
        pipe = _Pipe(client)
        self._pipes.append(pipe)
        if self._stall_until is None:
            self._connect(pipe)

    def _connect(self, pipe: _Pipe) -> None:
        """Open the broker side; if the broker is down, the client is reset, as it would be."""
        try:
            upstream = socket.create_connection(self.upstream, timeout=CONNECT_TIMEOUT_S)
        except OSError:
            self._abort(pipe)
            return
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe.upstream = upstream

    def _abort(self, pipe: _Pipe) -> None:
        if pipe in self._pipes:
            self._pipes.remove(pipe)
        pipe.reset()

    def __enter__(self) -> BrokerProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
