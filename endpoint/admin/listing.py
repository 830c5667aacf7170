"""`list`: every configured endpoint under the user dir, with its state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from endpoint.host.dirs import has_config, read_endpoint_id, user_dir
from endpoint.host.pidlock import State, state_of


@dataclass(frozen=True)
class Listing:
    name: str
    endpoint_id: str | None
    state: State
    path: Path


def list_endpoints() -> list[Listing]:
    """Every configured endpoint directory under the user dir, by name."""
    root = user_dir()
    rows = []
    for ep_dir in sorted(root.iterdir()) if root.is_dir() else []:
        if ep_dir.is_dir() and has_config(ep_dir):
            rows.append(Listing(ep_dir.name, read_endpoint_id(ep_dir), state_of(ep_dir), ep_dir))
    return rows
