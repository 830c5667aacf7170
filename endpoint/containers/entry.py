"""``python3 -m endpoint.containers.entry MODULE [ARG...]``: run MODULE as a container's PID 1.

docker and podman send SIGTERM to the container's first process when the runtime CLI is
told to stop (Parsl cancels a block by signalling the job's process group, and the CLI
forwards the signal). But the kernel ignores signals for which PID 1 has no handler, and
Parsl's worker pool installs none, so without this wrapper a cancelled block leaves its
container running until the pool notices, minutes later, that the interchange is gone.
Here every terminating signal ends the process at once; the PID namespace takes the
workers with it and ``--rm`` removes the container. (``--init`` would need tini or catatonit
in every runtime; this needs only the Python the worker already has.)

``python3 /RUN_DIR/worker-overlay/code-H/endpoint/containers/entry.py [--first DIR]...
[--last DIR]... MODULE [ARG...]``: the same, for an image without this endpoint's package
(`endpoint.containers.overlay`). Run by path, this file's own tree replaces its directory at
the head of ``sys.path``; ``--first`` directories follow it (ahead of the image's
site-packages), ``--last`` ones go after everything. Processes the pool spawns inherit the
path (multiprocessing's spawn start method hands ``sys.path`` to its children).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from types import FrameType

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_USAGE = "usage: python3 -m endpoint.containers.entry [--first DIR] [--last DIR] MODULE [ARG...]"


def _exit_now(signum: int, _frame: FrameType | None) -> None:
    os._exit(128 + signum)  # the shell convention for "killed by signal N"


def _path_options(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(first, last, rest): the leading ``--first DIR`` / ``--last DIR`` pairs taken off."""
    first: list[str] = []
    last: list[str] = []
    rest = list(argv)
    while len(rest) >= 2 and rest[0] in ("--first", "--last"):
        (first if rest[0] == "--first" else last).append(rest[1])
        del rest[:2]
    return first, last, rest


def _set_path(first: list[str], last: list[str]) -> None:
    if __spec__ is None:  # run by path: sys.path[0] is this file's directory
        here = os.path.dirname(os.path.abspath(__file__))
        tree = os.path.dirname(os.path.dirname(here))  # the directory holding endpoint/
        if sys.path and os.path.abspath(sys.path[0] or ".") == here:
            del sys.path[0]
        first = [tree, *first]
    sys.path[0:0] = first
    sys.path.extend(last)


def main(argv: list[str]) -> None:
    first, last, rest = _path_options(argv)
    if not rest:
        raise SystemExit(_USAGE)
    for sig in _SIGNALS:
        signal.signal(sig, _exit_now)
    _set_path(first, last)
    module, *args = rest
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
