"""Where the entrypoint leaves its files; shared by the appliance's helper scripts."""

from __future__ import annotations

import os
from pathlib import Path


def run_dir() -> Path:
    """Where the entrypoint left its files (its defaults, for a shell without its env)."""
    if os.environ.get("APPLIANCE_RUN_DIR"):
        return Path(os.environ["APPLIANCE_RUN_DIR"])
    state = os.environ.get("APPLIANCE_STATE_DIR")
    if not state:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        state = str(Path(xdg) / "compute-endpoint")
    return Path(state) / "run"
