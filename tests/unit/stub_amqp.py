"""A broker-free stand-in for `AmqpSession`, so the runtime's and the manager's loops run in
unit tests (`endpoint/amqp/pool.py`'s `SessionFactory`).

`StubBroker` is the factory: hand it to `EndpointRuntime(sessions=...)` or
`Manager(sessions=...)`. Every session it makes records what the loop asks of it (start, stop,
publish, ack, reject) and the test plays the broker's part (connect, disconnect, deliver,
confirm), which the session reports through the loop's `SessionEvents` as the real one would.

Everything lands in one global sequence of `Op`s, together with the journal's committed
writes (`tap_journal`) and whatever else a test records (`StubBroker.record`), so a test can
check orders such as "the task was journaled before it was acked". One re-entrant lock plays
the real session's I/O thread: state changes, the sequence and the events a session reports
are serialized, and `observe` callbacks run inside it, at the moment an operation happens.

Waits (`wait_for` and friends) poll with a generous deadline and fail with what they waited
for; no test should assert how long anything took.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from endpoint.amqp.session import MessageProperties, MessageSink, Outgoing, SessionEvents
from endpoint.runtime.journal import Batch, Journal, JournaledTask

T = TypeVar("T")

#: How long a wait gives the code under test: far more than it needs on a loaded machine.
DEADLINE_S = 30.0
_POLL_S = 0.02


@dataclass(frozen=True)
class JournalWrite:
    """What one committed journal transaction wrote (task ids)."""

    added: tuple[str, ...] = ()
    started: tuple[str, ...] = ()
    results: tuple[str, ...] = ()
    forgot: tuple[str, ...] = ()


@dataclass(frozen=True)
class Op:
    """One operation in the global sequence.

    `source` is a session's name (``amqp-tasks``, ...), ``journal`` or whatever a test
    records. Kinds a session records: ``start``, ``stop``, ``publish`` (with `messages`),
    ``ack`` and ``reject`` (with `generation`, `tag`, `multiple`; `stale` when the
    generation is not the session's current one, so the real session would drop it), and the
    broker's side: ``connect``, ``disconnect``, ``deliver``, ``confirm`` (with `keys`, `ok`),
    ``cancel`` (the broker cancelled the consumer) and ``consume`` (consuming again).
    The journal records ``write`` (with `write`).
    """

    seq: int
    source: str
    kind: str
    generation: int = 0
    tag: int = 0
    multiple: bool = False
    stale: bool = False
    ok: bool = True
    keys: tuple[str, ...] = ()
    messages: tuple[Outgoing, ...] = ()
    write: JournalWrite | None = None
    info: dict[str, Any] = field(default_factory=dict)


#: Decides, at publish time, whether the broker confirms a message at once (True), nacks it
#: at once (False) or leaves it in flight for the test to settle (None).
ConfirmPolicy = Callable[[Outgoing], bool | None]


def confirm_none(_: Outgoing) -> bool | None:
    return None


def confirm_all(_: Outgoing) -> bool | None:
    return True


def confirm_prefixes(*prefixes: str) -> ConfirmPolicy:
    """Confirm at once the messages whose key starts with one of `prefixes` (heartbeats)."""

    def policy(item: Outgoing) -> bool | None:
        return True if item.key.startswith(prefixes) else None

    return policy


class StubBroker:
    """A `SessionFactory` whose sessions share one sequence of operations and one lock."""

    def __init__(self, confirm: ConfirmPolicy = confirm_none) -> None:
        self.confirm_policy = confirm
        self._cond = threading.Condition(threading.RLock())
        self._ops: list[Op] = []
        self._observers: list[Callable[[Op], None]] = []
        self.sessions: dict[str, StubSession] = {}

    # ---- SessionFactory ------------------------------------------------------------------
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
    ) -> StubSession:
        with self._cond:
            assert name not in self.sessions, f"two sessions named {name}"
            session = StubSession(
                self,
                url,
                events,
                consume_queue=consume_queue,
                prefetch_count=prefetch_count,
                name=name,
                dead_after=dead_after,
                exclusive=exclusive,
                on_message=on_message,
                consume_exchange=consume_exchange,
            )
            self.sessions[name] = session
            return session

    # ---- the sequence ----------------------------------------------------------------------
    @contextmanager
    def io(self) -> Iterator[None]:
        """Hold the broker's lock: what a session does and reports happens atomically."""
        with self._cond:
            yield

    def record(self, source: str, kind: str, **fields: Any) -> Op:
        """Append an operation, tell the observers (on the caller's thread) and the waiters."""
        with self._cond:
            op = Op(len(self._ops), source, kind, **fields)
            self._ops.append(op)
            for observer in list(self._observers):
                observer(op)
            self._cond.notify_all()
            return op

    def observe(self, callback: Callable[[Op], None]) -> None:
        """Call `callback(op)` for every later operation, as it happens (keep it quick)."""
        with self._cond:
            self._observers.append(callback)

    def ops(self, source: str | None = None, kind: str | None = None) -> list[Op]:
        with self._cond:
            return [
                op
                for op in self._ops
                if (source is None or op.source == source) and (kind is None or op.kind == kind)
            ]

    def published(self, source: str, prefix: str = "") -> list[Outgoing]:
        """Every message `source` published (republishes included), oldest first."""
        return [
            m for op in self.ops(source, "publish") for m in op.messages if m.key.startswith(prefix)
        ]

    def first(self, pred: Callable[[Op], bool], what: str = "operation") -> Op:
        """The earliest operation matching `pred` (AssertionError when there is none)."""
        for op in self.ops():
            if pred(op):
                return op
        raise AssertionError(f"no {what} in {self.describe()}")

    def describe(self) -> str:
        lines = []
        for op in self.ops():
            extra = [f"gen={op.generation} tag={op.tag}"] if op.kind in ("ack", "reject") else []
            extra += [f"keys={list(op.keys)}"] if op.keys else []
            extra += [f"msgs={[m.key for m in op.messages]}"] if op.messages else []
            extra += [str(op.write)] if op.write else []
            extra += ["stale"] if op.stale else []
            lines.append(f"  {op.seq:3} {op.source} {op.kind} {' '.join(extra)}")
        return "the sequence:\n" + "\n".join(lines)

    # ---- waits ---------------------------------------------------------------------------
    def wait_for(self, check: Callable[[], T | None], what: str, timeout: float = DEADLINE_S) -> T:
        """Wait until `check()` returns something truthy (it may look at any state: the wait
        wakes on every operation and polls too); return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = check()
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; {self.describe()}")
                self._cond.wait(min(left, _POLL_S))

    def wait_op(self, pred: Callable[[Op], bool], what: str, timeout: float = DEADLINE_S) -> Op:
        """Wait for the first operation matching `pred`; return it."""
        return self.wait_for(
            lambda: next((op for op in self.ops() if pred(op)), None), what, timeout
        )

    def wait_published(self, source: str, key: str, count: int = 1) -> list[Outgoing]:
        """Wait until `source` published `key` at least `count` times; return those."""

        def found() -> list[Outgoing] | None:
            got = [m for m in self.published(source) if m.key == key]
            return got if len(got) >= count else None

        return self.wait_for(found, f"{count} publish(es) of {key} on {source}")


class StubSession:
    """One session of a `StubBroker`: satisfies `endpoint.amqp.session.Session`."""

    def __init__(
        self,
        broker: StubBroker,
        url: str,
        events: SessionEvents,
        *,
        consume_queue: str | None,
        prefetch_count: int,
        name: str,
        dead_after: float | None,
        exclusive: bool,
        on_message: MessageSink | None,
        consume_exchange: str | None = None,
    ) -> None:
        self.broker = broker
        self.url = url
        self.name = name
        self.events = events
        self.consume_queue = consume_queue
        self.prefetch_count = prefetch_count
        self.dead_after = dead_after
        self.exclusive = exclusive
        self.on_message = on_message
        self.consume_exchange = consume_exchange
        #: False while the broker has cancelled the consumer (`cancel_consumer`)
        self.consuming = False
        self.generation = 0
        self.connected = False
        self.started = False
        self.stopped = False
        self._next_tag = 0
        #: keys published on the current connection and not yet confirmed, oldest first
        self.in_flight: list[str] = []

    # ---- Session: what the loop calls --------------------------------------------------
    def start(self) -> None:
        with self.broker.io():
            self.started = True
            self.broker.record(self.name, "start")

    def stop(self, timeout: float = 10.0) -> None:
        with self.broker.io():
            self.stopped = True
            self.connected = False
            self.in_flight.clear()
            self.broker.record(self.name, "stop")

    def publish(self, items: list[Outgoing]) -> None:
        if not items:
            return
        with self.broker.io():
            online = self.connected
            self.broker.record(
                self.name,
                "publish",
                generation=self.generation,
                keys=tuple(i.key for i in items),
                messages=tuple(items),
                ok=online,
            )
            if not online:
                # As the real session with its channel down: every item is nacked at once
                # (between connections the real one may also drop them silently).
                self.events.on_confirms([i.key for i in items], False)
                return
            self.in_flight.extend(i.key for i in items)
            decided: dict[bool, list[str]] = {True: [], False: []}
            for item in items:
                verdict = self.broker.confirm_policy(item)
                if verdict is not None:
                    decided[verdict].append(item.key)
            for ok, keys in decided.items():
                if keys:
                    self.confirm(keys, ok)

    def ack(self, generation: int, tag: int, multiple: bool = True) -> None:
        with self.broker.io():
            stale = generation != self.generation or not self.connected
            self.broker.record(
                self.name, "ack", generation=generation, tag=tag, multiple=multiple, stale=stale
            )

    def reject(self, generation: int, tag: int) -> None:
        with self.broker.io():
            stale = generation != self.generation or not self.connected
            self.broker.record(self.name, "reject", generation=generation, tag=tag, stale=stale)

    # ---- the broker's side: what the test drives ---------------------------------------
    def connect(self) -> int:
        """A new connection (generation) is ready; returns its generation."""
        with self.broker.io():
            assert not self.connected, f"{self.name} is already connected"
            self.generation += 1
            self.connected = True
            self.consuming = self.consume_queue is not None
            self._next_tag = 0
            self.broker.record(self.name, "connect", generation=self.generation)
            self.events.on_connected(self, self.generation)
            return self.generation

    def disconnect(self, reason: str = "connection lost", *, nack_in_flight: bool = True) -> None:
        """The connection drops. Unconfirmed publishes are nacked after `on_disconnected`, as
        the real session does; `nack_in_flight=False` loses them without a word instead."""
        with self.broker.io():
            assert self.connected, f"{self.name} is not connected"
            self.connected = False
            lost, self.in_flight = self.in_flight, []
            self.broker.record(self.name, "disconnect", generation=self.generation)
            self.events.on_disconnected(self, self.generation, reason)
            if lost and nack_in_flight:
                self.events.on_confirms(lost, False)

    def cancel_consumer(self, reason: str = "the queue was deleted") -> None:
        """The broker cancels the consumer; the connection and its channels stay open."""
        with self.broker.io():
            assert self.connected and self.consuming, f"{self.name} is not consuming"
            self.consuming = False
            self.broker.record(self.name, "cancel", generation=self.generation)
            self.events.on_consumer(self, self.generation, False, reason)

    def resume_consumer(self) -> None:
        """The session consumes its queue again, on the same channel (tags continue)."""
        with self.broker.io():
            assert self.connected and not self.consuming, f"{self.name} is consuming"
            self.consuming = True
            self.broker.record(self.name, "consume", generation=self.generation)
            self.events.on_consumer(self, self.generation, True, "")

    def deliver(
        self,
        body: bytes,
        headers: dict[str, Any] | None = None,
        *,
        content_type: str | None = None,
        timestamp: int | None = None,
    ) -> tuple[int, int]:
        """A message arrives on the consumed queue; returns its (generation, tag)."""
        with self.broker.io():
            assert self.consume_queue is not None, f"{self.name} consumes no queue"
            assert self.connected, f"{self.name} is not connected"
            assert self.consuming, f"{self.name} does not consume (its consumer was cancelled)"
            self._next_tag += 1
            gen, tag = self.generation, self._next_tag
            self.broker.record(
                self.name, "deliver", generation=gen, tag=tag, info={"headers": headers or {}}
            )
            if self.on_message is not None:
                props = MessageProperties(content_type, timestamp, headers or {})
                self.on_message(gen, tag, props, body)
            else:
                self.events.on_delivery(gen, tag, headers or {}, body)
            return gen, tag

    def confirm(self, keys: Iterable[str], ok: bool = True) -> None:
        """The broker confirms (or nacks) in-flight publishes by key."""
        keys = list(keys)
        with self.broker.io():
            for key in keys:
                assert key in self.in_flight, f"{key} is not in flight on {self.name}"
                self.in_flight.remove(key)
            self.broker.record(
                self.name, "confirm", generation=self.generation, keys=tuple(keys), ok=ok
            )
            self.events.on_confirms(keys, ok)

    def settle_all(self, ok: bool = True) -> list[str]:
        """Confirm (or nack) everything in flight; returns the keys."""
        with self.broker.io():
            keys = list(self.in_flight)
            if keys:
                self.confirm(keys, ok)
            return keys


# ---- the journal in the same sequence --------------------------------------------------------


class _RecordingBatch(Batch):
    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(db)
        self.added: list[str] = []
        self.started: list[str] = []
        self.results: list[str] = []
        self.forgot: list[str] = []

    def add_tasks(self, tasks: Iterable[JournaledTask], started: set[str]) -> None:
        tasks = list(tasks)
        self.added += [t.task_id for t in tasks]
        self.started += [t.task_id for t in tasks if t.task_id in started]
        super().add_tasks(tasks, started)

    def mark_started(self, task_ids: Iterable[str]) -> None:
        task_ids = list(task_ids)
        self.started += task_ids
        super().mark_started(task_ids)

    def set_results(self, results: Iterable[tuple[str, bytes]]) -> None:
        results = list(results)
        self.results += [t for t, _ in results]
        super().set_results(results)

    def forget(self, task_ids: Iterable[str]) -> None:
        task_ids = list(task_ids)
        self.forgot += task_ids
        super().forget(task_ids)


class RecordingJournal(Journal):
    """A `Journal` that records each committed transaction as a ``journal write`` op."""

    def __init__(self, path: Path | str, broker: StubBroker) -> None:
        super().__init__(path)
        self._broker = broker

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        rec = _RecordingBatch(self._db)
        with super().batch():
            yield rec
        # Only now is it committed (a failed transaction raised above and records nothing).
        write = JournalWrite(
            tuple(rec.added), tuple(rec.started), tuple(rec.results), tuple(rec.forgot)
        )
        self._broker.record("journal", "write", write=write)


class HasJournal(Protocol):
    """Anything with a `journal` attribute (the runtime)."""

    journal: Journal


def tap_journal(owner: HasJournal, broker: StubBroker) -> None:
    """Swap `owner.journal` (not yet used) for one that records its writes in `broker`."""
    path = owner.journal.path
    owner.journal.close()
    owner.journal = RecordingJournal(path, broker)


def journal_rows(path: Path) -> dict[str, JournaledTask]:
    """What is committed in a journal file right now, read on a connection of its own."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT task_id, function_id, body, result_serializers, resource_spec, attempts,"
            " result FROM tasks ORDER BY rowid"
        ).fetchall()
    finally:
        db.close()
    return {
        r[0]: JournaledTask(
            r[0], r[1], bytes(r[2]), [], r[4], r[5], None if r[6] is None else bytes(r[6])
        )
        for r in rows
    }
