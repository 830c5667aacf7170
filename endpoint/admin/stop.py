"""`stop`: one call always suffices (SIGTERM, a grace period, then SIGKILL of the tree).

`stop --remote` also has the service refuse the endpoint's registrations for a while.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endpoint.admin.auth import LoginPrompt
from endpoint.admin.register import service_for
from endpoint.config import load_endpoint_dir
from endpoint.errors import ConfigError, LifecycleError
from endpoint.host import daemon
from endpoint.host.dirs import read_endpoint_id, resolve
from endpoint.host.pidlock import State, clean_stale_pid, probe, read_pid

log = logging.getLogger(__name__)

#: Default time `stop` gives the endpoint to drain (runtime: 30 s), tear down (20 s) and exit.
STOP_GRACE_S = 60.0


@dataclass
class Stopped:
    name: str
    was: State
    cleaned_stale: bool = False
    locked_remotely: str | None = None
    report: daemon.StopReport | None = None


def _read_pid_soon(ep_dir: Path) -> int:
    # The holder writes its pid right after taking the lock: give it a moment.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        pid = read_pid(ep_dir)
        if pid is not None:
            return pid
        time.sleep(0.05)
    raise LifecycleError(f"{ep_dir / 'daemon.pid'} is locked but names no process")


def lock_remotely(ep_dir: Path, prompt: LoginPrompt | None) -> str:
    """`stop --remote`: have the service refuse this endpoint's registrations for a while."""
    endpoint_id = read_endpoint_id(ep_dir)
    if endpoint_id is None:
        raise LifecycleError(f"endpoint {ep_dir.name} was never registered: nothing to lock")
    try:
        cfg: Any = load_endpoint_dir(ep_dir)[0]
    except ConfigError as e:
        log.warning("using the default service: %s", e)
        cfg = None
    service_for(cfg, prompt).lock(endpoint_id)
    return endpoint_id


def stop(
    target: str | None,
    *,
    grace_s: float = STOP_GRACE_S,
    remote: bool = False,
    prompt: LoginPrompt | None = None,
) -> Stopped:
    """One call always suffices: SIGTERM, wait `grace_s`, then SIGKILL the process tree."""
    return stop_dir(resolve(target), grace_s=grace_s, remote=remote, prompt=prompt)


def stop_dir(
    ep_dir: Path,
    *,
    grace_s: float = STOP_GRACE_S,
    remote: bool = False,
    prompt: LoginPrompt | None = None,
) -> Stopped:
    found = probe(ep_dir)
    out = Stopped(ep_dir.name, found.state)
    if remote:
        out.locked_remotely = lock_remotely(ep_dir, prompt)
    if found.stale_file:
        out.cleaned_stale = clean_stale_pid(ep_dir)
        return out
    if not found.locked:
        return out
    pid = found.pid or _read_pid_soon(ep_dir)
    out.report = daemon.stop_tree(pid, lambda: probe(ep_dir).locked, grace_s)
    # A SIGKILLed endpoint could not remove its own pid file.
    clean_stale_pid(ep_dir)
    return out
