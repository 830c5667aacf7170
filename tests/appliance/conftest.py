"""Appliance fixtures: a real dockerd, the images built once per session (`make images
broker-image`, cached layers), and containers and compose projects named with a per-session
prefix and removed with their volumes at the end.

Docker is required: without a daemon every test here fails, never skips, and says what to run
(`make dockerd`). The official SDK on the host (the peer venv) reaches a web service only at
localhost:5000 (its fixed `local` environment, protocol.md §1.1), so tests that drive it take
that port; everything else runs on free ports.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.timeouts import set_suite_timeout
from webservice.server import port_is_free

ROOT = Path(__file__).resolve().parents[2]
SESSION = uuid.uuid4().hex[:6]
PREFIX = f"ccea-{SESSION}"
LABEL = f"compute-endpoint.test-session={SESSION}"
SDK_PORT = 5000
#: The endpoint's id file inside the images (ENDPOINT_NAME=default, HOME=/var/lib/...).
ENDPOINT_JSON = "/var/lib/compute-endpoint/.globus_compute/default/endpoint.json"
COMPUTE_SCOPE = "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all"
#: How long a test waits for another process to give localhost:5000 back.
SDK_PORT_WAIT_S = float(os.environ.get("APPLIANCE_SDK_PORT_WAIT_S", "300"))
#: The session's first test also runs `make images broker-image` (up to 1800 s, its own
#: limit) and may wait SDK_PORT_WAIT_S for localhost:5000: far beyond the global 300 s.
SUITE_TIMEOUT_S = 2400


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    set_suite_timeout(items, Path(__file__).parent, SUITE_TIMEOUT_S)


def version() -> str:
    found = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found, "no version in pyproject.toml"
    return found.group(1)


def sh(*argv: str, check: bool = True, timeout: float = 120, **kw: Any) -> str:
    """Run a command; its stdout. On failure the assertion shows the command and its output."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    return str(proc.stdout)


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    return sh("docker", *args, check=check, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, cond: Any, timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass(frozen=True)
class Images:
    version: str
    endpoint: str
    worker: str
    all_in_one: str
    broker: str
    build_s: float


@dataclass(frozen=True)
class Container:
    name: str

    def inspect(self) -> dict[str, Any]:
        return dict(json.loads(docker("inspect", self.name))[0])

    def health(self) -> str:
        health = self.inspect()["State"].get("Health") or {}
        return str(health.get("Status", "none"))

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def logs(self, tail: int = 200) -> str:
        proc = subprocess.run(
            ["docker", "logs", "--tail", str(tail), self.name],
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.stdout + proc.stderr

    def exec(self, *cmd: str, check: bool = True) -> str:
        return docker("exec", self.name, *cmd, check=check)

    def wait_health(self, want: str, timeout: float = 180) -> None:
        def reached() -> bool:
            if not self.running():
                raise AssertionError(f"{self.name} exited:\n{self.logs()}")
            return self.health() == want

        try:
            wait_for(f"{self.name} to be {want}", reached, timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- logs of {self.name} ---\n{self.logs()}") from None

    def client_env(self) -> dict[str, str]:
        """What `compute-appliance-env` prints: the SDK's env for this appliance."""
        lines = self.exec("compute-appliance-env").splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)


def run_container(
    image: str,
    *args: str,
    name: str,
    env: dict[str, str] | None = None,
    options: tuple[str, ...] = (),
) -> Container:
    env_args = [f"--env={k}={v}" for k, v in (env or {}).items()]
    docker(
        "run", "--detach", "--name", name, "--label", LABEL, "--network", "host",
        *env_args, *options, image, *args,
    )  # fmt: skip
    return Container(name)


def broker_ports() -> dict[str, str]:
    """Free ports for a RabbitMQ node on the host's network (AMQP, management API,
    distribution, epmd)."""
    return {
        "BROKER_PORT": str(free_port()),
        "BROKER_ADMIN_PORT": str(free_port()),
        "BROKER_DIST_PORT": str(free_port()),
        "BROKER_EPMD_PORT": str(free_port()),
    }


@pytest.fixture(scope="session")
def docker_ready() -> None:
    try:
        sh("docker", "info", timeout=30)
    except (AssertionError, FileNotFoundError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"no Docker daemon answers ({e}); start one with `make dockerd`")


@pytest.fixture(scope="session")
def images(docker_ready: None) -> Images:
    """`make images broker-image`: built once per session, from cached layers when unchanged."""
    v = version()
    broker = os.environ.get("BROKER_IMAGE") or "compute-endpoint-broker:ci"
    started = time.monotonic()
    proc = subprocess.run(
        ["make", "--no-print-directory", "images", "broker-image", f"BROKER_CI_IMAGE={broker}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    build_s = time.monotonic() - started
    if proc.returncode != 0:
        pytest.fail(f"make images failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    built = Images(
        v,
        f"compute-endpoint:{v}",
        f"compute-endpoint-worker:{v}",
        f"compute-endpoint-all-in-one:{v}",
        broker,
        build_s,
    )
    print(f"\n[appliance] make images broker-image: {build_s:.1f}s")
    for ref in (built.endpoint, built.worker, built.all_in_one, built.broker):
        size = int(docker("image", "inspect", "--format", "{{.Size}}", ref).strip())
        print(f"[appliance] {ref}: {size / 1e6:.0f} MB")
    return built


@pytest.fixture(scope="session", autouse=True)
def _remove_session_containers() -> Iterator[None]:
    yield
    proc = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label={LABEL}"],
        capture_output=True,
        text=True,
        check=False,
    )
    ids = proc.stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "--force", "--volumes", *ids], capture_output=True)


def sdk_port() -> int:
    """localhost:5000 for a web service the SDK will use, once any other user let it go."""
    wait_for(
        f"localhost:{SDK_PORT} to be free (the official SDK's `local` service address)",
        lambda: port_is_free(SDK_PORT),
        SDK_PORT_WAIT_S,
        every=2,
    )
    return SDK_PORT


def run_sdk(peer_python: Path, env: dict[str, str], snippet: str, timeout: float = 240) -> Any:
    """Run `snippet` with the official SDK; it prints one JSON document as its last line."""
    with tempfile.TemporaryDirectory(prefix="ccea-sdk-") as user_dir:
        full_env = {**os.environ, **env, "GLOBUS_COMPUTE_USER_DIR": user_dir}
        proc = subprocess.run(
            [str(peer_python), "-c", textwrap.dedent(snippet)],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0:
        raise AssertionError(f"SDK snippet failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


ADD_SNIPPET = """
import json, os
from globus_compute_sdk import Executor

def add(a, b=0):
    import os
    return {"sum": a + b, "uid": os.getuid()}

with Executor(endpoint_id=os.environ["ENDPOINT_ID"]) as ex:
    fut = ex.submit(add, 40, b=2)
    print(json.dumps({"result": fut.result(timeout=180), "task_id": fut.task_id}))
"""
