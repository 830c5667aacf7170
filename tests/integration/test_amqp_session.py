"""AmqpSession against a real RabbitMQ: a failure that escapes pika's I/O loop is a lost
connection like any other, never the end of the session's thread (the fault suite's
proxy-drop case once lost every later result to a pika ValueError raised out of the loop)."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest

from endpoint.amqp.session import AmqpSession, Session

pytestmark = pytest.mark.integration

#: A deadline to stop waiting, not a figure: reconnects back off from about 0.3 s.
CONNECTED_WITHIN_S = 60.0


class Events:
    """Records the generations the session connected with."""

    def __init__(self) -> None:
        self.connected: list[int] = []
        self.cond = threading.Condition()

    def on_connected(self, session: Session, generation: int) -> None:
        with self.cond:
            self.connected.append(generation)
            self.cond.notify_all()

    def on_disconnected(self, session: Session, generation: int, reason: str) -> None:
        pass

    def on_delivery(self, generation: int, tag: int, headers: dict[str, Any], body: bytes) -> None:
        pass

    def on_confirms(self, keys: list[str], ok: bool) -> None:
        pass

    def on_consumer(self, session: Session, generation: int, consuming: bool, reason: str) -> None:
        pass


def _first_loop_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first connection's I/O loop raises, the way pika's connector once did."""
    made: list[pika.SelectConnection] = []

    class FirstFails(pika.SelectConnection):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)
            if len(made) == 1:
                self.ioloop.call_later(0, _raise)

    monkeypatch.setattr(pika, "SelectConnection", FirstFails)


def _raise() -> None:
    raise ValueError("Expected connected socket, but getpeername() failed")


def test_a_failure_escaping_pikas_loop_is_a_reconnect(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _first_loop_fails(monkeypatch)
    events = Events()
    session = AmqpSession(amqp_url, events, name="amqp-escape")
    session.start()
    try:
        with events.cond:
            reconnected = events.cond.wait_for(lambda: events.connected, CONNECTED_WITHIN_S)
        assert reconnected, "the session never connected after the failed loop"
        assert events.connected[0] >= 2  # the first connection was the one that failed
        assert "the connection failed inside pika" in caplog.text
    finally:
        session.stop()


def test_a_refused_account_says_it_was_replaced_or_revoked_then_uses_fresh_credentials(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The service rotates an endpoint's broker account at every registration or start and
    deletes it with the endpoint; the log says so, and credentials a manager hands over (the
    session's `url`) are used at the next attempt."""
    parts = urlsplit(amqp_url)
    stale = urlunsplit(parts._replace(netloc=f"ep.gone:old@{parts.hostname}:{parts.port}"))
    events = Events()
    session = AmqpSession(stale, events, name="amqp-refused")
    session.start()
    try:
        deadline = time.monotonic() + CONNECTED_WITHIN_S
        while "refused this endpoint's account" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text[-2000:]
            time.sleep(0.05)
        assert events.connected == []
        session.url = amqp_url  # what a manager's credential refresh does
        with events.cond:
            connected = events.cond.wait_for(lambda: events.connected, CONNECTED_WITHIN_S)
        assert connected, "the session did not use the fresh credentials"
    finally:
        session.stop()
