"""`compute-endpoint list` and `stop` against a real running endpoint."""

from __future__ import annotations

import json
import subprocess
import time

from webservice.stack import Stack, _bin


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_bin("compute-endpoint"), *args],
        env=stack.client_env(stack.root / "user"),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def status(stack: Stack, name: str) -> str:
    rows = json.loads(cli(stack, "list", "--format", "json").stdout)
    return next(r["status"] for r in rows if r["name"] == name)


def test_list_shows_running_and_one_stop_suffices(stack: Stack) -> None:
    stack.configure_endpoint("life", "engine:\n  type: ThreadPoolEngine\n  max_workers: 1\n")
    endpoint_id = stack.start_endpoint("life")
    assert status(stack, "life") == "Running"
    again = cli(stack, "start", "life")
    assert again.returncode == 73 and "already running" in again.stderr
    t0 = time.monotonic()
    stopped = cli(stack, "stop", "life")
    assert stopped.returncode == 0, stopped.stderr
    assert time.monotonic() - t0 < 30
    assert stack.procs["endpoint:life"].wait(10) == 0
    assert status(stack, "life") == "Stopped"
    assert stack.get(f"/v2/endpoints/{endpoint_id}/status")["status"] == "offline"
