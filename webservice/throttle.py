"""Slowing down secret guessing on the routes that check a client secret.

Per claimed client id: the first `free` failures cost nothing; after that each failure makes
the next attempt wait 1, 2, 4, ... seconds (at most `max_delay_s`), and an attempt that comes
earlier is answered 429 with Retry-After *without the secret being checked*, so guesses cannot
be made faster by sending them in parallel. A success clears the count. A client that knows its
secret never fails, so it is never slowed (unless someone is guessing its secret right now).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from webservice.errors import OAuthError

#: Client ids remembered; the oldest are forgotten first (claimed ids cost memory).
MAX_TRACKED = 10_000


@dataclass
class _Failures:
    count: int = 0
    not_before: float = 0.0


class AuthThrottle:
    def __init__(self, free: int, max_delay_s: float) -> None:
        self._free = free
        self._max_delay_s = max_delay_s
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def check(self, client_id: str) -> None:
        """Raise 429 (slow_down) while `client_id` must wait."""
        entry = self._failures.get(client_id)
        wait = entry.not_before - time.monotonic() if entry else 0.0
        if wait > 0:
            raise OAuthError(
                "slow_down",
                f"too many failed authentications of this client; retry in {math.ceil(wait)} s",
                429,
                retry_after_s=math.ceil(wait),
            )

    def failed(self, client_id: str) -> None:
        entry = self._failures.pop(client_id, None) or _Failures()
        entry.count += 1
        if entry.count > self._free:
            delay = min(2.0 ** (entry.count - self._free - 1), self._max_delay_s)
            entry.not_before = time.monotonic() + delay
        self._failures[client_id] = entry
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def succeeded(self, client_id: str) -> None:
        self._failures.pop(client_id, None)
