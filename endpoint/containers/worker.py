"""``python3 -m endpoint.containers.worker --options JSON``: a process-pool worker in a container.

The same worker as ``python -m endpoint.worker`` (same messages, same `execute_task`), but
its channel to the engine is the container's stdin and stdout instead of an inherited socket:
a file descriptor cannot cross ``docker run``, while the runtime relays stdio (podman even
hands the engine's socket straight in). The first message is the hello, which here carries
this worker's versions (`endpoint.containers.versions`) for the engine to check.

stdout is the channel, so it is moved away from fd 1 before anything runs: whatever a task
prints lands on stderr (the runtime's log) rather than in the middle of a Result.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from multiprocessing.connection import Connection
from types import FrameType

from endpoint.containers.versions import local_versions
from endpoint.worker.__main__ import options_from_json
from endpoint.worker.execute import WorkerOptions, execute_task


def take_stdio() -> tuple[Connection, Connection]:
    """(reader, writer) on the original stdin/stdout; fds 0 and 1 become harmless."""
    out_fd = os.dup(1)
    os.dup2(2, 1)
    in_fd = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    return Connection(in_fd, writable=False), Connection(out_fd, readable=False)


def serve(
    reader: Connection, writer: Connection, options: WorkerOptions, max_tasks: int | None
) -> None:
    writer.send_bytes(json.dumps(local_versions()).encode())
    done = 0
    while max_tasks is None or done < max_tasks:
        try:
            message = reader.recv()
        except EOFError:  # the engine (or the runtime's relay) went away
            return
        if message is None:
            return
        task_id, packed_task, result_serializers = message
        writer.send_bytes(execute_task(task_id, packed_task, result_serializers, options))
        done += 1


def _exit_now(signum: int, _frame: FrameType | None) -> None:
    # As PID 1 a signal without a handler is ignored; the runtime's stop means stop.
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m endpoint.containers.worker")
    parser.add_argument("--options", required=True, help="WorkerOptions as JSON")
    parser.add_argument("--max-tasks", type=int, default=None)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_now)
    signal.signal(signal.SIGHUP, _exit_now)
    # Ctrl-C reaches the whole process group; the engine, not the terminal, stops workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reader, writer = take_stdio()
    try:
        serve(reader, writer, options_from_json(args.options), args.max_tasks)
    except (BrokenPipeError, ConnectionResetError):
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
