"""The official SDK 4.19 -> our web service -> our endpoint with Parsl's TorqueProvider, on the
Torque commands Debian's `slurm-wlm-torque` puts over Slurm (qsub, qstat, qdel; tools/slurm-up
installs it).

What runs: tasks run inside the batch jobs qsub submitted (they report SLURM_JOB_ID; the
wrappers set no PBS_JOBID), qstat knows those jobs, blocks scale 0 -> N -> 0 (qdel), and
`compute-endpoint stop` leaves nothing queued. A TorqueProvider needs a launcher other than
its default AprunLauncher (there is no aprun here); it has no `exclusive` option, and its
`nodes=1:ppn=1` request shares a node with other jobs.

The qsub wrapper passes sbatch its own `-o`/`-e` (`<script>.o<id>` in the submitting process's
working directory), which win over the `#PBS -o/-e` lines of Parsl's script: the batch
output lands where the endpoint runs (its directory for a detached endpoint), so each test
starts its endpoint in its own temporary directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.hpc.conftest import (
    NODES,
    PARTITION,
    HpcStack,
    Job,
    JobWatch,
    ended_as,
    jobs_under,
    slurm,
    wait_for,
)
from tests.hpc.test_slurm import config as slurm_config

pytestmark = pytest.mark.hpc

StartEndpoint = Callable[[str, str], str]

#: The Torque commands TorqueProvider runs.
TORQUE_TOOLS = ("qsub", "qstat", "qdel")


@pytest.fixture(scope="module", autouse=True)
def torque_wrappers() -> None:
    missing = [tool for tool in TORQUE_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: run tools/slurm-up (it installs Debian's "
            "slurm-wlm-torque: apt-get install slurm-wlm-torque)"
        )


def config(
    name: str,
    *,
    max_idletime: float = 5,
    init_blocks: int = 0,
    min_blocks: int = 0,
    max_blocks: int = 2,
) -> str:
    """test_slurm's config with TorqueProvider: SimpleLauncher (the default AprunLauncher
    needs Cray's aprun), and no partition or `exclusive` (Torque's provider has neither)."""
    slurm = slurm_config(
        name,
        max_idletime=max_idletime,
        init_blocks=init_blocks,
        min_blocks=min_blocks,
        max_blocks=max_blocks,
        launcher="SimpleLauncher",
    )
    slurm_only = f"    type: SlurmProvider\n    partition: {PARTITION}\n    exclusive: false\n"
    assert slurm_only in slurm
    return slurm.replace(slurm_only, "    type: TorqueProvider\n")


WHERE = """
import json
from globus_compute_sdk import Executor

def where(seconds):
    import os, time
    time.sleep(seconds)
    return [os.environ.get(k, "") for k in ("SLURM_JOB_ID", "PBS_JOBID", "SLURMD_NODENAME")]

with Executor(endpoint_id={ep!r}) as ex:
    futures = [ex.submit(where, {s}) for _ in range({n})]
    print(json.dumps([f.result(timeout=240) for f in futures]))
"""


def start_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: StartEndpoint, name: str, cfg: str
) -> str:
    """Start the endpoint with `tmp_path` as its working directory (where qsub's output goes)."""
    with monkeypatch.context() as m:
        m.chdir(tmp_path)
        return start(name, cfg)


def qstat_knows(job_id: str) -> bool:
    out = slurm("qstat", job_id)
    return any(line.split()[:1] == [job_id] for line in out.splitlines())


def test_tasks_run_in_jobs_qsub_submitted_and_blocks_scale_back_to_zero(
    hpc: HpcStack,
    endpoint_factory: StartEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "torque-jobs"
    ep = start_in(tmp_path, monkeypatch, endpoint_factory, name, config(name))
    ep_dir = hpc.endpoint_dir(name)
    assert jobs_under(ep_dir) == []  # init_blocks 0: nothing before a task arrives

    with JobWatch(ep_dir) as watch:
        results = hpc.run_sdk(WHERE.format(ep=ep, n=6, s=2), name)
        watch.poll()
        wait_for(f"{name}'s blocks to scale in to 0", lambda: not jobs_under(ep_dir))

    job_ids = {job_id for job_id, _, _ in results}
    assert len(results) == 6 and all(job_id.isdigit() for job_id in job_ids), results
    assert job_ids <= watch.ran(), (results, watch.states)  # squeue saw each one running
    assert {node for _, _, node in results} <= set(NODES), results
    print(f"\n[hpc] {name}: PBS_JOBID in tasks: {sorted({pbs for _, pbs, _ in results})}")
    for job_id in job_ids:
        assert_submitted_by_qsub(watch.seen[job_id], ep_dir, tmp_path)
        assert qstat_knows(job_id), job_id  # the Torque view of the same job
    # Scaled in by qdel (-> scancel), or drained: never a walltime kill or a failure.
    ended = {job_id: ended_as(job_id) for job_id in watch.seen}
    assert set(ended.values()) <= {"CANCELLED", "COMPLETED"}, ended
    print(f"[hpc] {name}: blocks {ended}, most at once {watch.most_at_once}")


def assert_submitted_by_qsub(job: Job, ep_dir: Path, workdir: Path) -> None:
    """Parsl's Torque script (#PBS lines), submitted through the qsub wrapper: its default
    output file `<script>.o<id>` in the endpoint's working directory."""
    script = Path(job.command)
    assert ep_dir in script.parents, job
    assert "#PBS -l nodes=1:ppn=1" in script.read_text(), script.read_text()
    assert (workdir / f"{script.name}.o{job.job_id}").exists(), sorted(workdir.iterdir())


def test_stop_leaves_nothing_queued(
    hpc: HpcStack,
    endpoint_factory: StartEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "torque-stop"
    # min_blocks 1 and a long idle time: the block would stay if stop did not qdel it.
    cfg = config(name, max_idletime=600, init_blocks=1, min_blocks=1, max_blocks=1)
    ep = start_in(tmp_path, monkeypatch, endpoint_factory, name, cfg)
    ep_dir = hpc.endpoint_dir(name)

    def running() -> list[Job]:
        return [job for job in jobs_under(ep_dir) if job.state == "RUNNING"]

    block = wait_for(f"{name}'s init block to run", running)[0]
    results = hpc.run_sdk(WHERE.format(ep=ep, n=2, s=0), name)
    assert {job_id for job_id, _, _ in results} == {block.job_id}, (results, block)
    submitted = {job.job_id for job in jobs_under(ep_dir)}

    stop = hpc.compute_endpoint("stop", name)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    proc = hpc.stack.procs[f"endpoint:{name}"]
    wait_for(f"endpoint {name} to exit", lambda: proc.poll() is not None)
    wait_for(f"every job of {name} to leave squeue", lambda: not jobs_under(ep_dir))
    ended = {job_id: ended_as(job_id) for job_id in submitted}
    assert set(ended.values()) == {"CANCELLED"}, ended  # qdel'ed by the endpoint
