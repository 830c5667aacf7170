"""`<ep_dir>/status.json`: what a running endpoint says about itself, and the health rule.

The runtime rewrites the file at every heartbeat, whenever an AMQP session connects or drops,
and once more as it stops. A container HEALTHCHECK (`compute-endpoint health`) judges it
without asking the service: a live process is not enough, because an endpoint that lost its
broker looks alive while every task waits (anchors §1c, "half-working" endpoints).

| healthy when                                                                          |
|---------------------------------------------------------------------------------------|
| the process that wrote the file still holds the endpoint's pid-file lock              |
| its state is `running` and its task and result AMQP sessions are connected             |
| it consumes its task queue (the broker did not cancel its consumer: a deleted queue)  |
| its last heartbeat went out less than 2 x heartbeat_period + FRESHNESS_SLACK_S ago      |
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endpoint.host.files import read_small, write_replace
from endpoint.host.pidlock import probe

STATUS_FILE = "status.json"

#: Seconds allowed on top of two heartbeat periods: a heartbeat is due every period, so one
#: late heartbeat (a slow disk, a busy loop) must not flip the verdict.
FRESHNESS_SLACK_S = 10.0


def write_status(ep_dir: Path, doc: dict[str, Any]) -> None:
    """Replace status.json atomically (temp file + rename), private to the endpoint's user;
    a planted symlink is replaced, never written through (`endpoint.host.files`)."""
    # `default=str`: engine status may carry values json cannot encode (paths, enums).
    text = json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
    write_replace(ep_dir / STATUS_FILE, text)


def read_status(ep_dir: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(read_small(ep_dir / STATUS_FILE, 16 * 1024 * 1024))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True)
class Health:
    healthy: bool
    reason: str


def writer_alive(ep_dir: Path, pid: object) -> bool:
    """True while the process that wrote status.json holds the endpoint's lock.

    The flock is exact on one host (host/pidlock.py); comparing pids catches a status file left
    by an earlier process while a new one is still starting.
    """
    found = probe(ep_dir)
    return found.locked and isinstance(pid, int) and found.pid == pid


def judge(
    doc: dict[str, Any] | None,
    *,
    alive: bool,
    now: float | None = None,
    slack_s: float = FRESHNESS_SLACK_S,
) -> Health:
    """The health rule of the module docstring, as a pure function of what was read."""
    if doc is None:
        return Health(False, f"no readable {STATUS_FILE}: the endpoint has not run yet")
    pid = doc.get("pid")
    if not alive:
        return Health(False, f"the endpoint process (pid {pid}) is not running")
    state = doc.get("state")
    if state != "running":
        return Health(False, f"the endpoint is {state}")
    sessions = doc.get("amqp_sessions") or {}
    if not doc.get("amqp_connected"):
        down = sorted(name for name, up in sessions.items() if not up) or ["unknown"]
        return Health(False, f"AMQP not connected ({', '.join(down)} down)")
    if doc.get("amqp_consuming") is False:  # absent in files of older versions: consuming
        return Health(False, "the broker cancelled the task queue consumer (queue deleted?)")
    breaker = doc.get("engine_breaker")
    if isinstance(breaker, dict) and breaker.get("state") == "open":
        reason = (str(breaker.get("reason", "")).splitlines() or ["unknown"])[0][:300]
        if breaker.get("kind") == "blocks":
            when = breaker.get("retry_after_unix")
            until = (
                time.strftime(" until %H:%M:%S", time.localtime(when))
                if isinstance(when, int | float)
                else ""
            )
            return Health(False, f"batch jobs keep failing; no new blocks{until}: {reason}")
        return Health(False, f"the engine keeps failing; no new engine for now: {reason}")
    last = doc.get("last_heartbeat_unix")
    if not isinstance(last, int | float):
        return Health(False, "no heartbeat published yet")
    period = float(doc.get("heartbeat_period") or 0)
    age = (time.time() if now is None else now) - float(last)
    limit = 2 * period + slack_s
    if age > limit:
        return Health(False, f"last heartbeat {age:.0f}s ago (limit {limit:.0f}s)")
    return Health(True, f"endpoint {doc.get('endpoint_id')} healthy; heartbeat {age:.0f}s ago")


def health_of(ep_dir: Path, slack_s: float = FRESHNESS_SLACK_S) -> Health:
    doc = read_status(ep_dir)
    alive = doc is not None and writer_alive(ep_dir, doc.get("pid"))
    return judge(doc, alive=alive, slack_s=slack_s)
