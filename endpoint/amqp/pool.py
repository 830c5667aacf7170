"""Sessions shared by URL, and the interface the runtime and the manager need of a session.

The service may give every queue the same broker account (one connection serves them all) or
each its own (one connection each). Both loops ask a `SessionPool` for the session of each
role; roles whose URLs match share one. Tests hand the pool a factory of stub sessions
(`tests/unit/stub_amqp.py`) to run either loop without a broker.
"""

from __future__ import annotations

from typing import Any, Protocol

from endpoint.amqp.session import AmqpSession, MessageSink, Session, SessionEvents


class SessionFactory(Protocol):
    def __call__(
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
    ) -> Session: ...


class SessionPool:
    """One session per broker URL; the first role asking for a URL names and configures it
    (so ask for the consuming role first)."""

    def __init__(self, events: SessionEvents, factory: SessionFactory = AmqpSession) -> None:
        self._events = events
        self._factory = factory
        self._by_url: dict[str, Session] = {}

    def session(self, url: str, name: str, **options: Any) -> Session:
        found = self._by_url.get(url)
        if found is None:
            found = self._by_url[url] = self._factory(url, self._events, name=name, **options)
        return found

    def all(self) -> list[Session]:
        return list(self._by_url.values())

    def start(self) -> None:
        for s in self.all():
            s.start()

    def stop(self) -> None:
        for s in self.all():
            s.stop()
