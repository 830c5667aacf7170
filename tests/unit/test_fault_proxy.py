"""The fault proxy (tests/fault/proxy.py) against a loopback echo server: forwards, drops with a
reset, refuses for a while, stalls without closing and resumes with the held bytes."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fault.proxy import BrokerProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    port = int(server.getsockname()[1])
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield port
    stop.set()
    acceptor.join(5)
    server.close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[BrokerProxy]:
    with BrokerProxy(echo_port) as p:
        yield p


def _client(proxy: BrokerProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def _echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_both_ways(proxy: BrokerProxy) -> None:
    with _client(proxy) as c:
        assert _echo(c, b"hello") == b"hello"
        big = bytes(range(256)) * 2000  # more than the proxy buffers at once
        assert _echo(c, big) == big


def test_drop_resets_live_connections_and_refuses_for_a_while(proxy: BrokerProxy) -> None:
    with _client(proxy) as c:
        assert _echo(c, b"x") == b"x"
        proxy.drop(refuse_for=0.6)
        with pytest.raises(ConnectionResetError):
            c.sendall(b"y")
            c.recv(1)
    # Reset at connect or at the first read, whichever the kernel reports first.
    with pytest.raises(ConnectionResetError), _client(proxy) as refused:
        refused.recv(1)
    time.sleep(0.8)
    with _client(proxy) as c:
        assert _echo(c, b"back") == b"back"
    assert proxy.refused >= 1


def test_stall_holds_bytes_then_delivers_them(proxy: BrokerProxy) -> None:
    with _client(proxy, timeout=0.3) as live:
        assert _echo(live, b"a") == b"a"
        proxy.stall(1.0)
        live.sendall(b"held")
        with pytest.raises(TimeoutError):
            live.recv(4)  # the connection stays up but nothing moves
        with _client(proxy, timeout=0.3) as new:  # a black hole: accepted, silent
            new.sendall(b"new")
            with pytest.raises(TimeoutError):
                new.recv(3)
            new.settimeout(3)
            live.settimeout(3)
            assert live.recv(4) == b"held"
            assert new.recv(3) == b"new"


def test_only_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        BrokerProxy(5672, upstream_host="10.0.0.1")
