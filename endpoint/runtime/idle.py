"""Idle shutdown: count heartbeats without work and say when the endpoint should exit.

Semantics follow the official endpoint's ``idle_heartbeats_soft`` / ``idle_heartbeats_hard``
(features.md §6.8) with one deliberate difference: the soft limit also applies to an endpoint
that never received a task. Upstream such an endpoint (typically a user endpoint started for a
submission that never came) only meets the hard limit, about 48 hours with the defaults.

* Nothing happens unless ``soft > 0``.
* Soft: consecutive heartbeats with no task received, no result produced and nothing
  outstanding. Reaching ``soft`` stops the endpoint.
* Hard: consecutive heartbeats with no movement at all, even with tasks outstanding (a task
  stuck on a lost worker, say). Passing ``max(soft + 1, hard)`` stops the endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IdleTracker:
    soft: int
    hard: int
    _last: tuple[int, int] = field(default=(0, 0), init=False)
    soft_count: int = field(default=0, init=False)
    hard_count: int = field(default=0, init=False)

    @property
    def enabled(self) -> bool:
        return self.soft > 0

    @property
    def hard_limit(self) -> int:
        return max(self.soft + 1, self.hard)

    def tick(self, received: int, completed: int, outstanding: int) -> str | None:
        """Record one heartbeat; return why the endpoint should stop, or None."""
        if not self.enabled:
            return None
        moved = self._last != (received, completed)
        self._last = (received, completed)
        if moved:
            self.soft_count = self.hard_count = 0
            return None
        self.hard_count += 1
        self.soft_count = self.soft_count + 1 if outstanding == 0 else 0
        if self.soft_count >= self.soft:
            return f"idle for {self.soft_count} heartbeats (idle_heartbeats_soft={self.soft})"
        if self.hard_count > self.hard_limit:
            return (
                f"no progress for {self.hard_count} heartbeats with {outstanding} task(s) "
                f"outstanding (idle_heartbeats_hard={self.hard})"
            )
        return None

    def title_hint(self, period: float) -> str:
        """A process-title suffix telling an operator when an idle shutdown will happen."""
        if not self.enabled or self.hard_count == 0:
            return ""
        if self.soft_count:
            return f" [idle; shut down in {(self.soft - self.soft_count) * period:.0f}s]"
        left = (self.hard_limit + 1 - self.hard_count) * period
        return f" [possibly idle; shut down in {left:.0f}s]"
