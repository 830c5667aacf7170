#!/opt/compute-endpoint/bin/python
"""Run supervisord in the foreground, then exit with the code the watchdog left behind.

supervisord itself always exits 0 when it is told to stop, so a container whose endpoint went
FATAL would look like a clean stop to `restart: on-failure` and to CI. The watchdog
(watchdog.py) writes the code it wants into `$APPLIANCE_RUN_DIR/exit-code` before it stops
supervisord; this wrapper runs supervisord in-process (no extra process between tini and
supervisord, so signals arrive unchanged) and returns that code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from supervisor import supervisord


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: supervise.py SUPERVISORD_CONF", file=sys.stderr)
        return 2
    verdict = Path(os.environ["APPLIANCE_RUN_DIR"]) / "exit-code"
    verdict.unlink(missing_ok=True)
    supervisord.main(["--nodaemon", "--configuration", argv[0]])
    try:
        return int(verdict.read_text().strip())
    except (OSError, ValueError):
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
