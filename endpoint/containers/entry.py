"""``python3 -m endpoint.containers.entry MODULE [ARG...]``: run MODULE as a container's PID 1.

docker and podman send SIGTERM to the container's first process when the runtime CLI is
told to stop (Parsl cancels a block by signalling the job's process group, and the CLI
forwards the signal). But the kernel ignores signals for which PID 1 has no handler, and
Parsl's worker pool installs none, so without this wrapper a cancelled block leaves its
container running until the pool notices, minutes later, that the interchange is gone.
Here every terminating signal ends the process at once; the PID namespace takes the
workers with it and ``--rm`` removes the container. (``--init`` would need tini or catatonit
in every runtime; this needs only the Python the worker already has.)
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from types import FrameType

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _exit_now(signum: int, _frame: FrameType | None) -> None:
    os._exit(128 + signum)  # the shell convention for "killed by signal N"


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python3 -m endpoint.containers.entry MODULE [ARG...]")
    for sig in _SIGNALS:
        signal.signal(sig, _exit_now)
    module, *args = argv
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
