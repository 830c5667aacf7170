"""Process titles: `ps` tells endpoints, managers and their states apart."""

from __future__ import annotations


def set_title(title: str) -> None:
    """Name the process in `ps` so operators can tell endpoints apart (best effort)."""
    try:
        import setproctitle  # installed with Parsl; absent only in unusual installs
    except ImportError:
        return
    setproctitle.setproctitle(title)
