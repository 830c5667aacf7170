"""HPC fixtures: a real Slurm (`tools/slurm-up`: nodes c1 and c2 on this machine), our web
service and our endpoints with SlurmProvider, and the official SDK 4.19 (peer venv) submitting.

Slurm must be up: without it every test here fails (never skips) and says to run
`tools/slurm-up`. The tests run in the host's network namespace, where slurmctld and the slurmd
nodes listen on 127.0.0.1, and where the workers inside the batch jobs connect back to the
endpoint's interchange on 127.0.0.1.

So that they never contend for localhost:5000 (the official SDK's fixed `local` service, which
the e2e suite's session stack or a concurrent run may hold), the web service listens on a free
port and each SDK snippet points the SDK's service-URL lookup there (the fallback of
tests/integration/test_webservice_sdk.py); auth goes there through GLOBUS_SDK_SERVICE_URL_AUTH.

A batch job is ours when its command (the submit script Parsl's SlurmProvider wrote) lies under
the endpoint's directory in this session's stack; Parsl names the jobs `parsl.<label>.block-N`.
Every job of ours still queued when an endpoint's fixture ends is `scancel`ed by id.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import Stack
from tests.timeouts import set_suite_timeout
from webservice.broker import free_port

#: The nodes and partition tools/slurm-up configures.
NODES = ("c1", "c2")
PARTITION = "debug"
#: Node states in which a node takes jobs (sinfo's short forms; a trailing * = not responding).
READY_STATES = ("idle", "mix", "alloc", "comp")
#: How long a test waits for a condition (a block to start, jobs to go): generous, because the
#: machine is shared and noisy (hpc.md pitfall 7). No test asserts a duration.
DEADLINE_S = 300.0
#: A test may wait for its endpoint, its tasks and the scale-in, each up to DEADLINE_S.
SUITE_TIMEOUT_S = 1200

#: Only when the service is not on the SDK's fixed local port: redirect its URL lookup.
URL_PATCH = """
import globus_compute_sdk.sdk.client as _client
_client.get_web_service_url = lambda *_a, **_k: {url!r}
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    set_suite_timeout(items, Path(__file__).parent, SUITE_TIMEOUT_S)


# ---- Slurm ---------------------------------------------------------------------------------


def slurm(*argv: str, timeout: float = 60) -> str:
    """Run a Slurm command; its stdout. A failure raises with the command and its output."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        output = (proc.stdout[-2000:] + proc.stderr[-2000:]).strip()
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {output}")
    return proc.stdout


def slurm_problem() -> str | None:
    """Why Slurm cannot run the tests, or None."""
    for tool in ("sinfo", "squeue", "sbatch", "scancel"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    try:
        out = slurm("sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %t", timeout=30)
    except (AssertionError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed: {e}"
    states = dict(line.split(maxsplit=1) for line in out.splitlines() if line.strip())
    bad = {node: states.get(node, "missing") for node in NODES}
    bad = {node: state for node, state in bad.items() if state not in READY_STATES}
    if bad:
        return f"nodes not ready in partition {PARTITION}: {bad} (sinfo: {states})"
    return None


@pytest.fixture(scope="session")
def slurm_up() -> None:
    problem = slurm_problem()
    if problem is not None:
        pytest.fail(f"Slurm is not up ({problem}): run tools/slurm-up (or `make slurm-up`)")


@dataclass(frozen=True)
class Job:
    job_id: str
    name: str
    state: str
    nodes: str
    command: str


def jobs_under(prefix: Path) -> list[Job]:
    """The queued, running or completing jobs whose submit script lies under `prefix`."""
    out = slurm("squeue", "-h", "-o", "%i|%j|%T|%N|%o")
    jobs = [Job(*line.split("|", 4)) for line in out.splitlines() if line.count("|") >= 4]
    return [job for job in jobs if job.command.startswith(f"{prefix}/")]


def ended_as(job_id: str) -> str:
    """How a job that left the queue ended (JobState: CANCELLED, COMPLETED, TIMEOUT, ...), from
    slurmctld's record of finished jobs (kept MinJobAge, 300 s; there is no accounting)."""
    out = slurm("scontrol", "-o", "show", "job", job_id)
    found = re.search(r"\bJobState=(\S+)", out)
    assert found, out
    return found.group(1)


def cancel_jobs_under(prefix: Path) -> list[str]:
    """`scancel` every job of `prefix` by id; the ids."""
    ids = [job.job_id for job in jobs_under(prefix)]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)
    return ids


def wait_for(what: str, cond: Callable[[], Any], timeout: float = DEADLINE_S) -> Any:
    """Poll `cond` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


@dataclass
class JobWatch:
    """Polls squeue in a thread: every job of `prefix` it saw (its latest sighting with nodes),
    the states it was seen in, and the most jobs at once."""

    prefix: Path
    seen: dict[str, Job] = field(default_factory=dict)
    states: dict[str, set[str]] = field(default_factory=dict)
    most_at_once: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> JobWatch:
        self._thread = threading.Thread(target=self._run, name="squeue-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=90)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(0.5)

    def poll(self) -> None:
        try:
            jobs = jobs_under(self.prefix)
        except (AssertionError, subprocess.TimeoutExpired) as e:
            self.errors.append(str(e))  # slurmctld busy: the next poll tries again
            return
        for job in jobs:
            if job.job_id not in self.seen or job.nodes:  # a pending job has no nodes yet
                self.seen[job.job_id] = job
            self.states.setdefault(job.job_id, set()).add(job.state)
        self.most_at_once = max(self.most_at_once, len(jobs))

    def ran(self) -> set[str]:
        """The ids of jobs seen RUNNING."""
        return {job_id for job_id, states in self.states.items() if "RUNNING" in states}


# ---- the stack and the official SDK ------------------------------------------------------


@dataclass
class HpcStack:
    """Our service on a free port, our endpoints, and the official SDK pointed at them."""

    stack: Stack
    peer_python: Path

    def endpoint_dir(self, name: str) -> Path:
        return self.stack.root / "user" / name

    def start_endpoint(self, name: str, config_yaml: str) -> str:
        self.stack.configure_endpoint(name, config_yaml)
        return self.stack.start_endpoint(name, timeout=120)

    def endpoint_log(self, name: str) -> str:
        """The endpoint's output and its own log files (Parsl's included), their tails."""
        parts = [f"--- endpoint:{name} output ---\n{self.stack.log_text(f'endpoint:{name}')}"]
        for path in sorted(self.endpoint_dir(name).rglob("*.log")):
            parts.append(f"--- {path} ---\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(part[-6000:] for part in parts)

    def run_sdk(self, snippet: str, name: str, timeout: float = DEADLINE_S) -> Any:
        """Run `snippet` with the official SDK; the JSON document it printed last. On failure
        the error shows the endpoint `name`'s logs."""
        env = self.stack.client_env(self.stack.root / "sdk-user")
        code = URL_PATCH.format(url=self.stack.url) + textwrap.dedent(snippet)
        proc = subprocess.run(
            [str(self.peer_python), "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"SDK snippet failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n"
                f"{self.endpoint_log(name)}"
            )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def compute_endpoint(
        self, *args: str, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """Our CLI with the stack's environment (its user directory, service URL)."""
        return subprocess.run(
            [str(Path(sys.executable).parent / "compute-endpoint"), *args],
            env=self.stack.client_env(self.stack.root / "user"),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="session")
def hpc(
    slurm_up: None, peer_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HpcStack]:
    stack = Stack(tmp_path_factory.mktemp("hpc-stack"), port=free_port())
    try:
        with stack:
            stack.start_service()
            yield HpcStack(stack, peer_python)
    finally:
        # After every endpoint stopped: whatever a failed test left, nothing of ours stays queued.
        cancel_jobs_under(stack.root)


@pytest.fixture
def endpoint_factory(hpc: HpcStack) -> Iterator[Callable[[str, str], str]]:
    """Start an endpoint of ours from a config; at the end stop it and scancel its jobs."""
    started: list[str] = []

    def start(name: str, config_yaml: str) -> str:
        started.append(name)
        return hpc.start_endpoint(name, config_yaml)

    yield start
    for name in started:
        hpc.stack.stop_endpoint(name)
        cancel_jobs_under(hpc.endpoint_dir(name))


# ---- the official endpoint on a free port (test_official_slurm.py, bench/hpc_bench.py) ------

# `official_url_env` lives in devstack.official_url (the benchmarks use it too).
