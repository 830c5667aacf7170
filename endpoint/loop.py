"""What the endpoint's and the manager's event loops share: stopping on a signal."""

from __future__ import annotations

import queue
import signal
import threading
from typing import Any


class SignalStoppable:
    """An event loop that a signal stops: set `_stop` and wake the loop's queue."""

    _stop: threading.Event
    _events: queue.SimpleQueue[tuple[Any, ...]]

    def request_stop(self, *_: Any) -> None:
        self._stop.set()
        self._events.put(("wake",))

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self.request_stop)
