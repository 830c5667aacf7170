"""The official SDK 4.19 -> our web service -> our endpoint, whose GlobusComputeEngine submits
real Slurm batch jobs (SlurmProvider) to the two-node cluster of `tools/slurm-up`.

What runs: tasks run inside the batch jobs (they report SLURM_JOB_ID, and squeue knew each of
those jobs while it ran); blocks scale 0 -> N -> 0 with init_blocks and min_blocks 0; a
two-node block (SrunLauncher) spreads its workers over c1 and c2; `compute-endpoint stop`
cancels every job the endpoint submitted. Conditions are waited for with generous deadlines;
no test asserts how long anything took.
"""

from __future__ import annotations

import json
import os
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
    wait_for,
)

pytestmark = pytest.mark.hpc

StartEndpoint = Callable[[str, str], str]


def config(
    name: str,
    *,
    max_idletime: float = 5,
    init_blocks: int = 0,
    min_blocks: int = 0,
    max_blocks: int = 2,
    nodes_per_block: int = 1,
    launcher: str | None = None,
    worker_init: str = "",
) -> str:
    """An endpoint config as a user writes it for this cluster (hpc.md's pitfalls avoided:
    exclusive false, address 127.0.0.1, a short strategy period)."""
    launcher_yaml = f"    launcher:\n      type: {launcher}\n" if launcher else ""
    return (
        f"display_name: {name}\n"
        "heartbeat_period: 5\n"
        "engine:\n"
        "  type: GlobusComputeEngine\n"
        "  address: 127.0.0.1\n"
        "  max_workers_per_node: 2\n"
        "  job_status_kwargs:\n"
        f"    max_idletime: {max_idletime}\n"
        "    strategy_period: 0.5\n"
        "  provider:\n"
        "    type: SlurmProvider\n"
        f"    partition: {PARTITION}\n"
        "    exclusive: false\n"
        f"    init_blocks: {init_blocks}\n"
        f"    min_blocks: {min_blocks}\n"
        f"    max_blocks: {max_blocks}\n"
        f"    nodes_per_block: {nodes_per_block}\n"
        '    walltime: "00:10:00"\n'
        "    cmd_timeout: 60\n"
        + (f"    worker_init: {json.dumps(worker_init)}\n" if worker_init else "")
        + launcher_yaml
    )


PRELUDE = """
import json, time
from globus_compute_sdk import Client, Executor
EP = {ep!r}

def where(seconds):
    import os, time
    time.sleep(seconds)
    return [os.environ.get("SLURM_JOB_ID", ""), os.environ.get("SLURMD_NODENAME", "")]
"""

#: `n` tasks that each sleep `s` seconds; their [SLURM_JOB_ID, SLURMD_NODENAME].
RUN_TASKS = """
with Executor(endpoint_id=EP) as ex:
    futures = [ex.submit(where, {s}) for _ in range({n})]
    print(json.dumps([f.result(timeout=240) for f in futures]))
"""


def run_tasks(hpc: HpcStack, name: str, ep: str, n: int, seconds: float) -> list[list[str]]:
    out: list[list[str]] = hpc.run_sdk(
        PRELUDE.format(ep=ep) + RUN_TASKS.format(n=n, s=seconds), name
    )
    assert len(out) == n
    return out


def no_jobs_left(hpc: HpcStack, name: str) -> Callable[[], bool]:
    return lambda: not jobs_under(hpc.endpoint_dir(name))


def test_tasks_run_inside_slurm_batch_jobs(hpc: HpcStack, endpoint_factory: StartEndpoint) -> None:
    name = "slurm-jobs"
    ep = endpoint_factory(name, config(name))
    with JobWatch(hpc.endpoint_dir(name)) as watch:
        results = run_tasks(hpc, name, ep, n=6, seconds=2)
        watch.poll()

    job_ids = {job_id for job_id, _ in results}
    assert all(job_id.isdigit() for job_id in job_ids), results
    # squeue knew every job a task ran in, and saw it running.
    assert job_ids <= watch.ran(), (results, watch.states)
    assert {node for _, node in results} <= set(NODES), results
    for job_id in job_ids:
        job = watch.seen[job_id]
        assert job.name.startswith("parsl."), job  # Parsl's block job, not some other job
        assert job.command.startswith(f"{hpc.endpoint_dir(name)}/"), job


def test_blocks_scale_from_zero_out_and_back_to_zero(
    hpc: HpcStack, endpoint_factory: StartEndpoint
) -> None:
    name = "slurm-scale"
    ep = endpoint_factory(name, config(name, max_idletime=5, max_blocks=2))
    # init_blocks 0: nothing is submitted before a task arrives.
    assert jobs_under(hpc.endpoint_dir(name)) == []

    with JobWatch(hpc.endpoint_dir(name)) as watch:
        results = run_tasks(hpc, name, ep, n=8, seconds=2)
        watch.poll()
        assert watch.most_at_once >= 1, watch  # 0 -> N
        # ... -> 0: after the idle time every block is scaled in (scancel) and leaves squeue.
        wait_for(f"{name}'s blocks to scale in to 0", no_jobs_left(hpc, name))

    assert {job_id for job_id, _ in results} <= watch.ran(), (results, watch.states)
    # Scaled in: each idle block was cancelled (or its workers drained and it completed);
    # none ran into its walltime or failed.
    ended = {job_id: ended_as(job_id) for job_id in watch.seen}
    assert set(ended.values()) <= {"CANCELLED", "COMPLETED"}, ended
    print(f"\n[hpc] {name}: blocks {ended}, most at once {watch.most_at_once}")


TWO_NODES = """
nodes, results = set(), []
deadline = time.monotonic() + 240
with Executor(endpoint_id=EP) as ex:
    # Until both nodes' worker pools took tasks (the second may register a little later).
    while nodes != {nodes!r} and time.monotonic() < deadline:
        for f in [ex.submit(where, 1) for _ in range(8)]:
            results.append(f.result(timeout=240))
            nodes.add(results[-1][1])
print(json.dumps(results))
"""


def test_two_node_block_spreads_workers_over_both_nodes(
    hpc: HpcStack, endpoint_factory: StartEndpoint
) -> None:
    name = "slurm-2nodes"
    cfg = config(name, max_blocks=1, nodes_per_block=2, launcher="SrunLauncher")
    ep = endpoint_factory(name, cfg)
    with JobWatch(hpc.endpoint_dir(name)) as watch:
        results: list[list[str]] = hpc.run_sdk(
            PRELUDE.format(ep=ep) + TWO_NODES.format(nodes=set(NODES)), name
        )
        watch.poll()

    assert {node for _, node in results} == set(NODES), results
    job_ids = {job_id for job_id, _ in results}
    assert job_ids <= watch.ran(), (results, watch.states)
    # One block (max_blocks 1), a single job allocated both nodes.
    blocks = [watch.seen[job_id] for job_id in job_ids]
    assert all(job.nodes in ("c[1-2]", "c1,c2") for job in blocks), blocks


FIRE_AND_FORGET = """
def hold(marker):
    import json, os, time
    with open(marker + ".tmp", "w") as f:
        f.write(json.dumps({{"pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID")}}))
    os.rename(marker + ".tmp", marker)
    time.sleep(3600)

client = Client()
fid = client.register_function(hold)
batch = client.create_batch()
batch.add(fid, args=({marker!r},))
print(json.dumps(client.batch_run(EP, batch)["tasks"][fid]))
"""


def _pid_gone(pid: int) -> Callable[[], bool]:
    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    return gone


def test_stop_cancels_every_job_it_submitted(
    hpc: HpcStack, endpoint_factory: StartEndpoint, tmp_path: Path
) -> None:
    name = "slurm-stop"
    # min_blocks 1 and a long idle time: the blocks would stay if stop did not cancel them.
    cfg = config(name, max_idletime=600, init_blocks=1, min_blocks=1, max_blocks=2)
    ep = endpoint_factory(name, cfg)
    ep_dir = hpc.endpoint_dir(name)

    def running() -> list[Job]:
        return [job for job in jobs_under(ep_dir) if job.state == "RUNNING"]

    wait_for(f"{name}'s init block to run", running)
    # A task still running in a block when the endpoint stops.
    marker = tmp_path / "task-started.json"
    hpc.run_sdk(
        PRELUDE.format(ep=ep) + FIRE_AND_FORGET.format(marker=str(marker)),
        name,
    )
    wait_for("the long task to start in a block", marker.exists)
    task = json.loads(marker.read_text())
    submitted = {job.job_id for job in jobs_under(ep_dir)}
    assert task["job"] in submitted, (task, submitted)

    stop = hpc.compute_endpoint("stop", name)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "is now stopped" in stop.stdout, stop.stdout + stop.stderr
    proc = hpc.stack.procs[f"endpoint:{name}"]
    wait_for(f"endpoint {name} to exit", lambda: proc.poll() is not None)

    wait_for(f"every job of {name} to leave squeue", no_jobs_left(hpc, name))
    # Cancelled by the endpoint, not ended by workers that lost their interchange.
    ended = {job_id: ended_as(job_id) for job_id in submitted}
    assert set(ended.values()) == {"CANCELLED"}, ended
    # The task's worker went with its job: nothing of ours runs on after stop.
    wait_for(f"the task's worker (pid {task['pid']}) to end", _pid_gone(int(task["pid"])))


WHICH_ENV = """
with Executor(endpoint_id=EP) as ex:
    def which():
        import os, sys
        import only_here
        return [only_here.WHERE, sys.prefix, os.environ.get("SLURMD_NODENAME", "")]
    print(json.dumps([f.result(timeout=240) for f in [ex.submit(which) for _ in range(4)]]))
"""


def test_worker_init_chooses_the_python_of_a_two_node_srun_block(
    hpc: HpcStack, endpoint_factory: StartEndpoint, tmp_path: Path
) -> None:
    """SrunLauncher writes the worker command through an unquoted heredoc: the command that
    lets worker_init's environment choose the Python must survive it, on both nodes."""
    from tests.integration.test_worker_init_env import user_env

    env = user_env(tmp_path / "userenv", shares_endpoint_packages=True)
    name = "slurm-env"
    cfg = config(
        name,
        nodes_per_block=2,
        max_blocks=1,
        launcher="SrunLauncher",
        worker_init=f"source {env}/bin/activate",
    )
    ep = endpoint_factory(name, cfg)
    out = hpc.run_sdk(PRELUDE.format(ep=ep) + WHICH_ENV, name)
    assert {(where, prefix) for where, prefix, _ in out} == {("the user environment", str(env))}
    assert {node for _, _, node in out} <= set(NODES)
