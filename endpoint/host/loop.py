"""What the endpoint's and the manager's event loops share: typed events, timers, stopping.

Each loop is one thread that owns every decision; I/O threads (AMQP sessions, engines, the
spawner) only put events on its queue. Events are frozen dataclasses, dispatched with `match`.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from endpoint.amqp.session import Session


@dataclass(frozen=True)
class Wake:
    """Nothing happened, but the loop must look at its stop flag now."""


@dataclass(frozen=True)
class Connected:
    session: Session


@dataclass(frozen=True)
class Disconnected:
    session: Session


@dataclass
class Every:
    """A periodic action of a loop: `action` runs when `due` (monotonic; 0: at once) passed."""

    period: float
    action: Callable[[], None]
    due: float = 0.0


def run_timers(stop: threading.Event, timers: list[Every], wait: Callable[[float], None]) -> None:
    """The one timer loop: run what is due, then `wait` (handle events) until the next is."""
    while not stop.is_set():
        now = time.monotonic()
        for t in timers:
            if now >= t.due:
                t.action()
                t.due = now + t.period
        wait(max(0.0, min((t.due for t in timers), default=now + 1.0) - time.monotonic()))


class EventLoop:
    """An event loop that a signal stops: set `_stop` and wake the loop's queue."""

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stop = threading.Event()

    def request_stop(self, *_: Any) -> None:
        self._stop.set()
        self._events.put(Wake())

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self.request_stop)

    def next_events(self, timeout: float, max_batch: int = 1) -> list[object]:
        """Up to `max_batch` events: wait `timeout` for the first, take the rest if queued."""
        try:
            events = [self._events.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(events) < max_batch:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        return events
