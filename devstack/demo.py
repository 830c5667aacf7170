"""`make demo`: bring up the embedded default stack and run a function with the official SDK.

The SDK is a test peer in its own venv (product code never imports it), so the submission
runs in that venv's python with the env knobs of protocol.md §7.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time

from devstack.stack import Stack

SDK_SNIPPET = """
from globus_compute_sdk import Executor
from globus_compute_sdk.errors import TaskExecutionFailed

def add(a, b=0):
    return a + b

def fails():
    raise ValueError("kaboom")

with Executor(endpoint_id={endpoint_id!r}) as ex:
    print("add(40, b=2) =", ex.submit(add, 40, b=2).result())
    try:
        ex.submit(fails).result()
    except TaskExecutionFailed as e:
        print("remote exception came back:", str(e).strip().splitlines()[-1])
"""

DEMO_CONFIG = """\
display_name: demo
engine:
  type: ProcessPoolEngine
  max_workers: 2
heartbeat_period: 10
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peer-python", required=True, help="python of the official SDK venv")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.monotonic()
    with Stack() as stack:
        stack.start_service()
        print(f"web service on {stack.url}, RabbitMQ on port {stack.rabbit.port}")
        stack.configure_endpoint("demo", DEMO_CONFIG)
        endpoint_id = stack.start_endpoint("demo")
        print(f"endpoint {endpoint_id} online after {time.monotonic() - t0:.1f}s")
        snippet = SDK_SNIPPET.format(endpoint_id=endpoint_id)
        proc = subprocess.run(
            [args.peer_python, "-c", snippet],
            env=stack.client_env(stack.root / "sdk-user"),
            check=False,
        )
        if proc.returncode != 0:
            print(stack.log_text("endpoint:demo")[-3000:], file=sys.stderr)
        return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
