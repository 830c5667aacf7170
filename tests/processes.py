"""Finding the processes a test's engines started (Parsl's interchange, say) with psutil."""

from __future__ import annotations

import os

import psutil


def descendants_running(needle: str, root: int | None = None) -> list[psutil.Process]:
    """Live descendants of `root` (default: this process) whose command line contains
    `needle`; processes that end while we look are skipped."""
    found = []
    for p in psutil.Process(root or os.getpid()).children(recursive=True):
        try:
            if needle in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found
