"""Fault injection for the reliability suite: die at a named point of the task path.

`COMPUTE_ENDPOINT_FAULT=POINT[:N]` makes the endpoint SIGKILL itself the N-th time (default 1)
the runtime passes POINT, so a test can crash it exactly between two steps whose order carries a
promise (journal before ack, result journaled before publish, ...). The points:

=================  ==================================================================
delivered          tasks arrived from the broker, not yet journaled nor acked
journaled          tasks journaled, not yet acked
acked              tasks journaled and acked, results not yet produced
result-journaled   results journaled, not yet published
published          results published, the broker's confirm not yet received
=================  ==================================================================

The runtime reads the variable once, at construction (`from_env`). When it is unset, as it always
is outside the fault suite, the hook is a function that does nothing, so the normal path pays one
no-op call per step and no parsing or lookups.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

from endpoint.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "COMPUTE_ENDPOINT_FAULT"
POINTS = frozenset({"delivered", "journaled", "acked", "result-journaled", "published"})
#: Acks and publishes are handed to the AMQP I/O thread, which sends them a moment later. Dying
#: at once would usually kill them unsent, which is just the point before. The main thread
#: sleeps this long first, so the frames reach the broker (and its confirms may come back) while
#: the runtime never processes them: exactly "sent, but the endpoint did not see it land".
GRACE_S = {"acked": 0.3, "published": 0.3}


def parse(spec: str) -> tuple[str, int]:
    """`POINT[:N]` -> (point, n); a typo must not silently disable the fault."""
    point, _, count = spec.strip().partition(":")
    if point not in POINTS:
        raise ConfigError(f"{ENV}={spec!r}: unknown point {point!r}; one of {sorted(POINTS)}")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise ConfigError(f"{ENV}={spec!r}: the count after ':' must be an integer") from None
    if n < 1:
        raise ConfigError(f"{ENV}={spec!r}: the count must be at least 1")
    return point, n


def _noop(point: str) -> None:
    pass


def armed(point: str, n: int, die: Callable[[], None]) -> Callable[[str], None]:
    """A `hit` that calls `die` on the n-th pass through `point`."""
    passes = 0

    def hit(at: str) -> None:
        nonlocal passes
        if at != point:
            return
        passes += 1
        if passes == n:
            log.warning("fault injection: dying at %r (pass %d)", point, n)
            time.sleep(GRACE_S.get(point, 0.0))
            die()

    return hit


def _sigkill_self() -> None:
    # SIGKILL, not exit: no finally blocks, no atexit, no flush; exactly what kill -9 does.
    os.kill(os.getpid(), signal.SIGKILL)


def from_env() -> Callable[[str], None]:
    """The runtime's hook: a no-op unless COMPUTE_ENDPOINT_FAULT is set (ConfigError if bad)."""
    spec = os.environ.get(ENV)
    if not spec:
        return _noop
    point, n = parse(spec)
    return armed(point, n, _sigkill_self)
