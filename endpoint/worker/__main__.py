"""One ProcessPoolEngine worker process: ``python -m endpoint.worker --fd N --options JSON``.

The engine starts this with one end of a socket pair as file descriptor N. The worker says
hello (an empty message) once it has imported everything, then answers each
``(task_id, packed_task, result_serializers)`` it receives with the packed Result bytes, in
order, until it receives ``None``, reaches ``--max-tasks`` or the engine goes away.
"""

from __future__ import annotations

import argparse
import json
import signal
from multiprocessing.connection import Connection

from endpoint.worker.execute import WorkerOptions, execute_task


def serve(conn: Connection, options: WorkerOptions, max_tasks: int | None) -> None:
    conn.send_bytes(b"")  # hello: imports are done, tasks may come
    done = 0
    while max_tasks is None or done < max_tasks:
        try:
            message = conn.recv()
        except EOFError:  # the engine closed its end or died
            return
        if message is None:
            return
        task_id, packed_task, result_serializers = message
        conn.send_bytes(execute_task(task_id, packed_task, result_serializers, options))
        done += 1


def options_from_json(text: str) -> WorkerOptions:
    raw = json.loads(text)
    allowed = raw.get("allowed_serializers")
    raw["allowed_serializers"] = None if allowed is None else tuple(allowed)
    return WorkerOptions(**raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m endpoint.worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--options", required=True, help="WorkerOptions as JSON")
    parser.add_argument("--max-tasks", type=int, default=None)
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group; the engine, not the terminal, stops workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(args.fd)
    try:
        serve(conn, options_from_json(args.options), args.max_tasks)
    except (BrokenPipeError, ConnectionResetError):  # the engine went away mid-reply
        return 0
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
