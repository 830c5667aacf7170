"""End-to-end fixtures: the real stack on localhost:5000 and the official SDK as a subprocess."""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from devstack.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack")) as s:
        s.start_service()
        yield s


@pytest.fixture(scope="session")
def our_endpoint(stack: Stack) -> str:
    stack.configure_endpoint(
        "ours",
        "display_name: ours\nengine:\n  type: ProcessPoolEngine\n  max_workers: 2\n"
        "heartbeat_period: 5\n",
    )
    return stack.start_endpoint("ours")


class SdkRunner(Protocol):
    """Runs a snippet with the official SDK; the JSON document it printed last."""

    def __call__(self, snippet: str, timeout: float = 240) -> Any: ...


@pytest.fixture(scope="session")
def run_sdk(stack: Stack, peer_python: Path) -> SdkRunner:
    """Run a snippet with the official SDK; it must print one JSON document as its last line."""

    def run(snippet: str, timeout: float = 240) -> Any:
        env = stack.client_env(stack.root / "sdk-user")
        proc = subprocess.run(
            [str(peer_python), "-c", textwrap.dedent(snippet)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"SDK snippet failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n"
                f"--- endpoint log ---\n{stack.log_text('endpoint:ours')[-3000:]}"
            )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run
