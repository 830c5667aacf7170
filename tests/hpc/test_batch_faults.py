"""Batch jobs that end under running tasks, on a real Slurm: an `scancel`, the walltime, a
node going down.

Each time the running task is retried per `max_retries_on_system_failure`, or fails with a
reason naming the batch job and what the scheduler says ended it (JobState=CANCELLED,
TIMEOUT, NODE_FAIL, ...), not a bare WorkerLost; and a later task succeeds in a new block.
The interchange notices a lost worker pool after `heartbeat_threshold` (10 s here).
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hpc.conftest import NODES, HpcStack, ended_as, slurm, wait_for
from tests.hpc.test_slurm import PRELUDE, StartEndpoint, config

pytestmark = pytest.mark.hpc

ONCE = """
def once_then_quick(marker, seconds):
    # The first attempt records where it runs and then holds its worker; a retry returns at once.
    import json, os, time
    info = {{"job": os.environ.get("SLURM_JOB_ID"), "node": os.environ.get("SLURMD_NODENAME")}}
    if not os.path.exists(marker):
        with open(marker + ".tmp", "w") as f:
            json.dump(info, f)
        os.rename(marker + ".tmp", marker)
        time.sleep(seconds)
    return info

from globus_compute_sdk.errors import TaskExecutionFailed
with Executor(endpoint_id=EP) as ex:
    fut = ex.submit(once_then_quick, {marker!r}, {seconds})
    try:
        first = ["ok", fut.result(timeout=900)]
    except TaskExecutionFailed as e:
        first = ["failed", str(e)]
    later = ex.submit(where, 0).result(timeout=600)
print(json.dumps([first, later]))
"""


def fault_config(name: str, retries: int, walltime: str = "00:10:00") -> str:
    cfg = config(name, max_idletime=600, max_blocks=2)
    cfg = cfg.replace('walltime: "00:10:00"', f'walltime: "{walltime}"')
    cfg = cfg.replace(
        "    strategy_period: 0.5\n", "    strategy_period: 0.5\n    status_polling_interval: 1\n"
    )
    return cfg + (
        f"  max_retries_on_system_failure: {retries}\n"
        "  heartbeat_period: 2\n"
        "  heartbeat_threshold: 10\n"
    )


class Background:
    """The SDK snippet running in a thread while the test breaks its batch job."""

    def __init__(self, hpc: HpcStack, name: str, ep: str, marker: Path, seconds: int) -> None:
        code = PRELUDE.format(ep=ep) + ONCE.format(marker=str(marker), seconds=seconds)
        self.out: list[Any] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(hpc, code, name), daemon=True)
        self._thread.start()
        self.marker = marker

    def _run(self, hpc: HpcStack, code: str, name: str) -> None:
        try:
            self.out = hpc.run_sdk(code, name, timeout=1500)
        except BaseException as e:
            self.error = e

    def where_first_ran(self) -> dict[str, str]:
        wait_for("the task to start in a block", lambda: self.marker.exists() or self.error)
        if self.error:
            raise self.error
        info: dict[str, str] = json.loads(self.marker.read_text())
        return info

    def results(self) -> list[Any]:
        self._thread.join(timeout=1600)
        if self.error:
            raise self.error
        return self.out


@pytest.fixture
def start_task(
    hpc: HpcStack, endpoint_factory: StartEndpoint, tmp_path: Path
) -> Callable[..., Background]:
    def start(name: str, cfg: str, seconds: int = 900) -> Background:
        ep = endpoint_factory(name, cfg)
        return Background(hpc, name, ep, tmp_path / f"{name}.json", seconds)

    return start


def assert_lost_with_reason(first: list[str], job: str, *states: str) -> None:
    kind, text = first
    print(f"\n[hpc] the error of a task whose job {job} ended:\n{text}")
    assert kind == "failed", first
    assert f"batch job {job}) was lost; the scheduler says: JobState=" in text, text
    assert any(f"JobState={state}" in text for state in states), (states, text)
    assert "max_retries_on_system_failure=0" in text, text


def test_an_scancelled_job_fails_its_task_naming_the_job_and_a_new_block_runs_later_tasks(
    start_task: Callable[..., Background],
) -> None:
    bg = start_task("fault-scancel", fault_config("fault-scancel", retries=0))
    job = bg.where_first_ran()["job"]
    slurm("scancel", job)
    first, later = bg.results()
    assert_lost_with_reason(first, job, "CANCELLED")
    assert later[0].isdigit() and later[0] != job, later
    assert ended_as(job) == "CANCELLED"


def test_an_scancelled_job_s_task_is_retried_in_a_new_block(
    start_task: Callable[..., Background],
) -> None:
    bg = start_task("fault-retry", fault_config("fault-retry", retries=1))
    job = bg.where_first_ran()["job"]
    slurm("scancel", job)
    (kind, info), later = bg.results()
    assert kind == "ok", info
    assert info["job"] != job and info["job"].isdigit(), (job, info)  # the retry's block
    assert later[0].isdigit() and later[0] != job, later


def test_a_job_killed_by_its_walltime_fails_its_task_naming_the_timeout(
    start_task: Callable[..., Background],
) -> None:
    # Slurm's smallest walltime is a minute; it checks time limits every 30 s.
    cfg = fault_config("fault-walltime", retries=0, walltime="00:01:00")
    bg = start_task("fault-walltime", cfg)
    job = bg.where_first_ran()["job"]
    first, later = bg.results()
    assert_lost_with_reason(first, job, "TIMEOUT")
    assert later[0].isdigit() and later[0] != job, later
    assert ended_as(job) == "TIMEOUT"


@pytest.fixture
def resume_nodes() -> Iterator[None]:
    yield
    for node in NODES:
        subprocess.run(
            ["scontrol", "update", f"nodename={node}", "state=resume"],
            capture_output=True,
            timeout=60,
            check=False,
        )

    def ready() -> bool:
        out = slurm("sinfo", "-h", "-N", "-o", "%N %t")
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return all(states.get(node, "").rstrip("*") in ("idle", "mix", "alloc") for node in NODES)

    wait_for("the nodes to take jobs again", ready)


def test_a_node_going_down_fails_its_task_naming_the_job_and_later_tasks_run(
    start_task: Callable[..., Background], resume_nodes: None
) -> None:
    bg = start_task("fault-node", fault_config("fault-node", retries=0))
    where = bg.where_first_ran()
    job, node = where["job"], where["node"]
    slurm("scontrol", "update", f"nodename={node}", "state=down", "reason=hpc-test-node-lost")
    first, later = bg.results()
    # Slurm ends the job with NODE_FAIL, or requeues it (a batch job's default).
    assert_lost_with_reason(first, job, "NODE_FAIL", "PENDING", "REQUEUED", "CANCELLED")
    # A later task runs: in a new block, or in the requeued job once Slurm starts it again
    # (with ReturnToService=2 a down node whose slurmd answers comes back by itself).
    assert later[0].isdigit() and later[1] in NODES, later
