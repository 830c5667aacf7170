"""One worker's cost per task, without the endpoint: `execute_task` on an SDK-serialized task.

`make bench-worker` runs N tasks (default 20,000) of each kind through `execute_task` in this
process, with the worker's memo (`endpoint.worker.memo`) as workers run it and with the memo off
(every payload deserialized, every result serialized), and prints
`worker.KIND.us_per_task memo=X fresh=Y ratio=Z`. Kinds: a no-op, the same function with
changing arguments (`add(i, 1)`), and a closure (never reused). The tasks are serialized with
the official SDK in its own venv (``--peer-python``), as the drain benchmark does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from endpoint.protocol.messages import Task, pack
from endpoint.worker import execute
from endpoint.worker.execute import WorkerOptions, execute_task
from endpoint.worker.memo import PayloadMemo

#: Runs in the official SDK's venv: each kind's function and argument payloads.
SERIALIZE = """
import json, sys
from globus_compute_sdk.serialize import ComputeSerializer

def noop():
    return None

def add(a, b):
    return a + b

def make_closure():
    base = 1
    def shifted(x):
        return x + base
    return shifted

n = int(sys.argv[1])
s = ComputeSerializer()
def task(fn, args):
    return s.pack_buffers([s.serialize(fn)]) + s.pack_buffers([s.serialize(args), s.serialize({})])
print(json.dumps({
    "noop": [task(noop, ())] * n,
    "args": [task(add, (i, 1)) for i in range(n)],
    "closure": [task(make_closure(), (i,)) for i in range(n)],
}))
"""


def payloads(peer_python: str, tasks: int) -> dict[str, list[str]]:
    out = subprocess.run(
        [peer_python, "-c", SERIALIZE, str(tasks)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def us_per_task(buffers: list[str], options: WorkerOptions, memo: PayloadMemo) -> float:
    execute._MEMO = memo
    bodies = []
    for buffer in buffers:
        task_id = str(uuid.uuid4())
        bodies.append((task_id, pack(Task(task_id=task_id, task_buffer=buffer))))
    began = time.perf_counter()
    for task_id, body in bodies:
        execute_task(task_id, body, [], options)
    return (time.perf_counter() - began) / len(bodies) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", required=True)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks of each kind (CI)")
    args = parser.parse_args()
    if args.quick:
        args.tasks = 1_000
    kinds = payloads(args.peer_python, args.tasks)
    with tempfile.TemporaryDirectory() as run_dir:
        options = WorkerOptions(endpoint_id=str(uuid.uuid4()), run_dir=str(Path(run_dir)))
        for kind, buffers in kinds.items():
            us_per_task(buffers[:200], options, PayloadMemo())  # warm imports and caches
            memo = us_per_task(buffers, options, PayloadMemo())
            fresh = us_per_task(buffers, options, PayloadMemo(size=0))
            print(
                f"worker.{kind}.us_per_task memo={memo:.1f} fresh={fresh:.1f}"
                f" ratio={fresh / memo:.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
