#!/opt/compute-endpoint/bin/python
"""A supervisord event listener that ends the container when a program gives up.

A program that keeps failing to start goes FATAL and supervisord carries on without it: the
container would look alive while nothing works. On PROCESS_STATE_FATAL this listener records
exit code 1 for supervise.py and stops supervisord, which stops the other programs in order;
the container then exits 1 and the orchestrator (or the CI job) sees the failure.

A program that exits by itself with an expected code (e.g. an endpoint's idle shutdown) ends
the container the same way, with exit code 0: a container without its program is not useful.

Protocol (supervisor docs, "Event Listeners"): write READY, read one header line and `len`
bytes of payload, answer RESULT 2\\nOK. stdout is the protocol channel; logs go to stderr.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TextIO


def parse(line: str) -> dict[str, str]:
    """`key:value key:value ...` (event headers and state-change payloads) as a dict."""
    return dict(token.split(":", 1) for token in line.split() if ":" in token)


def verdict(event: str, payload: dict[str, str]) -> int | None:
    """The container exit code this event calls for, or None to keep running."""
    if event == "PROCESS_STATE_FATAL":
        return 1
    if event == "PROCESS_STATE_EXITED" and payload.get("expected") == "1":
        return 0
    return None


def stop_supervisord(code: int, payload: dict[str, str], log: TextIO) -> None:
    run_dir = Path(os.environ.get("APPLIANCE_RUN_DIR", "."))
    # The first verdict wins: programs that exit while supervisord stops must not reset it.
    with open(run_dir / "exit-code", "a+") as f:
        f.seek(0)
        if not f.read().strip():
            f.write(f"{code}\n")
    name = payload.get("processname", "?")
    what = "went FATAL (it kept failing to start)" if code else "exited"
    print(f"watchdog: program {name} {what}; stopping the container", file=log, flush=True)
    os.kill(os.getppid(), signal.SIGTERM)  # our parent is supervisord


def serve(stdin: TextIO, stdout: TextIO, log: TextIO) -> None:
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:  # supervisord closed our stdin: it is going away
            return
        headers = parse(line)
        payload = parse(stdin.read(int(headers.get("len", "0"))))
        code = verdict(headers.get("eventname", ""), payload)
        if code is not None:
            stop_supervisord(code, payload, log)
        stdout.write("RESULT 2\nOK")
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout, sys.stderr)
