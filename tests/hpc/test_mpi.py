"""The official SDK's MPIFunction -> our web service -> our endpoint's GlobusMPIEngine, whose
two-node Slurm blocks run real MPI programs over both nodes c1 and c2.

The MPI is Debian's MPICH (`tools/install-prereqs --all`): ranks find each other through
Slurm's PMI-2 under `srun` (``SLURM_MPI_TYPE=pmi2``), or through MPICH's own Hydra
`mpiexec`, the launcher syntax (``-n``, ``-ppn``, ``-hosts``) Parsl composes for
``mpi_launcher: mpiexec``. Open MPI fits neither here: its mpiexec refuses that syntax, and
Slurm's PMIx plugin needs a library that must be present when slurmd starts.

The MPI program is a few lines of Python calling libmpich through ctypes (nothing to
compile): each rank prints its rank, the world size, an MPI_Allreduce of all ranks and the
Slurm node it ran on. Bad resource specifications fail their own task with a reason, and the
engine keeps serving. Conditions are waited for with generous deadlines; no test asserts how
long anything took.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.hpc.conftest import NODES, PARTITION, HpcStack

pytestmark = pytest.mark.hpc

StartEndpoint = Callable[[str, str], str]

#: The Debian package, its Hydra launcher and the library the MPI program loads.
MPICH_PACKAGE = "mpich"
HYDRA = "mpiexec.hydra"
LIBMPICH = "libmpich.so.12"

#: Each rank: MPI_Init, its rank and the world size, an allreduce (sum of all ranks), its node;
#: rank 0 also prints the launcher prefix to stderr.
#: MPICH's handles are fixed integers (its mpi.h): MPI_COMM_WORLD, MPI_INT, MPI_SUM.
MPI_PROGRAM = f"""
import ctypes, os, sys
mpi = ctypes.CDLL({LIBMPICH!r})
COMM_WORLD, MPI_INT, MPI_SUM = 0x44000000, 0x4C000405, 0x58000003
if mpi.MPI_Init(None, None) != 0:
    raise SystemExit("MPI_Init failed")
rank, size, total = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
mpi.MPI_Comm_rank(COMM_WORLD, ctypes.byref(rank))
mpi.MPI_Comm_size(COMM_WORLD, ctypes.byref(size))
mpi.MPI_Allreduce(ctypes.byref(rank), ctypes.byref(total), 1, MPI_INT, MPI_SUM, COMM_WORLD)
node = os.environ.get("SLURMD_NODENAME", "?")
print(f"rank={{rank.value}} size={{size.value}} sum={{total.value}} node={{node}}", flush=True)
if rank.value == 0:  # the launcher line the task ran under (the ranks inherit it)
    print("prefix=" + os.environ.get("PARSL_MPI_PREFIX", "?"), file=sys.stderr, flush=True)
mpi.MPI_Finalize()
"""
#: One rank's report. Hydra forwards the ranks' output in chunks, not lines: two ranks of one
#: node can reach stdout as "...node=c2rank=3 ...", so reports are found anywhere, not per line.
RANK_REPORT = re.compile(r"rank=(\d+) size=(\d+) sum=(\d+) node=(" + "|".join(NODES) + r"|\?)")

#: Two nodes, two ranks on each: 4 ranks, whose allreduce of 0+1+2+3 is 6.
SPEC = {"num_nodes": 2, "ranks_per_node": 2}
RANKS = 4


@pytest.fixture(scope="session")
def mpich() -> None:
    """Debian's MPICH, or a failure that says how to install it (never a skip)."""
    problems = []
    if shutil.which(HYDRA) is None:
        problems.append(f"`{HYDRA}` is not on PATH")
    try:
        ctypes.CDLL(LIBMPICH)
    except OSError as e:
        problems.append(f"{LIBMPICH} does not load ({e})")
    if problems:
        pytest.fail(
            f"MPICH is missing ({'; '.join(problems)}): run tools/install-prereqs --all"
            f" (or apt-get install {MPICH_PACKAGE})"
        )


def config(name: str, *, mpi_launcher: str, worker_init: str) -> str:
    """A GlobusMPIEngine config for this cluster: one block of both nodes, with two CPUs on
    each for two ranks (exclusive false leaves the rest to others; hpc.md's pitfalls)."""
    return (
        f"display_name: {name}\n"
        "heartbeat_period: 5\n"
        "engine:\n"
        "  type: GlobusMPIEngine\n"
        "  address: 127.0.0.1\n"
        f"  mpi_launcher: {mpi_launcher}\n"
        "  max_workers_per_block: 1\n"
        # Others' tests on this machine down a node now and then: rerun a task lost so.
        "  max_retries_on_system_failure: 2\n"
        "  job_status_kwargs:\n"
        "    strategy_period: 0.5\n"
        "  provider:\n"
        "    type: SlurmProvider\n"
        f"    partition: {PARTITION}\n"
        "    exclusive: false\n"
        "    nodes_per_block: 2\n"
        "    cores_per_node: 2\n"
        "    init_blocks: 1\n"
        "    min_blocks: 1\n"
        "    max_blocks: 1\n"
        '    walltime: "00:15:00"\n'
        "    cmd_timeout: 60\n"
        f"    worker_init: {json.dumps(worker_init)}\n"
        "    launcher:\n"
        "      type: SimpleLauncher\n"
    )


def srun_config(name: str) -> str:
    # Slurm's PMI-2 plugin wires MPICH's ranks (srun --mpi=pmi2, as a site's MPI module sets).
    return config(name, mpi_launcher="srun", worker_init="export SLURM_MPI_TYPE=pmi2")


def hydra_config(name: str, tmp_path: Path) -> str:
    # As a site's `module load mpich` would: MPICH's mpiexec first on PATH (Debian's
    # /usr/bin/mpiexec may be another MPI's, by its alternatives). A script, not a link:
    # Hydra looks for its proxy beside the mpiexec it was started as.
    bindir = tmp_path / "mpich-bin"
    bindir.mkdir()
    wrapper = bindir / "mpiexec"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which(HYDRA)} "$@"\n')
    wrapper.chmod(0o755)
    return config(name, mpi_launcher="mpiexec", worker_init=f"export PATH={bindir}:$PATH")


PRELUDE = """
import json
from globus_compute_sdk import Executor, MPIFunction
EP = {ep!r}

def run(spec, command, timeout=480):
    '''One MPIFunction task: its ShellResult as a dict, or the error it failed with.'''
    with Executor(endpoint_id=EP, resource_specification=spec) as ex:
        try:
            r = ex.submit(MPIFunction(command)).result(timeout=timeout)
        except Exception as e:
            return {{"error": type(e).__name__ + ": " + str(e)}}
    return {{"returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "cmd": r.cmd}}
"""

RUN_ONE = """
print(json.dumps(run({spec!r}, {command!r})))
"""


def mpi_command(tmp_path: Path) -> str:
    """The MPI program as an MPIFunction command (run by this Python, on both nodes)."""
    program = tmp_path / "mpi_hello.py"
    program.write_text(MPI_PROGRAM)
    return f"{sys.executable} {program}"


def run_mpi(hpc: HpcStack, name: str, ep: str, spec: Any, command: str) -> dict[str, Any]:
    snippet = PRELUDE.format(ep=ep) + RUN_ONE.format(spec=spec, command=command)
    # The block may wait in the queue behind others' jobs: generous (hpc.md pitfall 7).
    out: dict[str, Any] = hpc.run_sdk(snippet, name, timeout=600)
    return out


def assert_ranks_on_both_nodes(result: dict[str, Any]) -> None:
    """Four MPI ranks, two on each of c1 and c2, in one world whose allreduce saw them all."""
    assert "error" not in result, result
    assert result["returncode"] == 0, result
    reports = RANK_REPORT.findall(result["stdout"])
    assert len(reports) == RANKS == result["stdout"].count("rank="), result
    ranks = [(int(rank), int(size), int(total), node) for rank, size, total, node in reports]
    assert sorted(rank for rank, *_ in ranks) == list(range(RANKS)), result
    # One MPI world: every rank saw the others (not 4 singletons of size 1).
    assert {(size, total) for _, size, total, _ in ranks} == {(RANKS, sum(range(RANKS)))}, result
    assert Counter(node for *_, node in ranks) == dict.fromkeys(NODES, 2), result


def test_srun_mpi_function_spans_both_nodes(
    hpc: HpcStack, endpoint_factory: StartEndpoint, mpich: None, tmp_path: Path
) -> None:
    name = "mpi-srun"
    ep = endpoint_factory(name, srun_config(name))
    result = run_mpi(hpc, name, ep, SPEC, mpi_command(tmp_path))
    assert_ranks_on_both_nodes(result)
    # Parsl's srun prefix, with the block's two nodes and the counts made whole numbers.
    assert "prefix=srun --ntasks 4 --ntasks-per-node 2 --nodelist c1,c2" in result["stderr"], result


def test_mpiexec_mpi_function_spans_both_nodes(
    hpc: HpcStack, endpoint_factory: StartEndpoint, mpich: None, tmp_path: Path
) -> None:
    name = "mpi-hydra"
    ep = endpoint_factory(name, hydra_config(name, tmp_path))
    # Hydra hands every rank mpiexec's own environment (SLURMD_NODENAME=c1 included);
    # -genvnone (launcher_options) keeps each node's own, so the ranks name their node.
    spec = {**SPEC, "launcher_options": "-genvnone"}
    result = run_mpi(hpc, name, ep, spec, mpi_command(tmp_path))
    assert_ranks_on_both_nodes(result)
    assert "prefix=mpiexec -n 4 -ppn 2 -hosts c1,c2 -genvnone" in result["stderr"], result


#: Bad resource specifications, and what the failure of their task must name.
BAD_SPECS: list[tuple[dict[str, Any] | None, list[str]]] = [
    (None, ["needs a resource_specification", "num_nodes"]),
    ({"num_nodes": "two"}, ["num_nodes must be a whole number", "'two'"]),
    ({"num_nodes": 5}, ["num_nodes 5 is more than a block has", "2 node(s)"]),
    ({"nodes": 2}, ["unknown key(s) 'nodes'", "takes num_nodes, ranks_per_node"]),
    ({"num_node": 2}, ["'num_node' (did you mean 'num_nodes'?)"]),
    ({"ranks_per_node": 2}, ["num_nodes is missing"]),
    ({"num_nodes": 2, "num_ranks": 9, "ranks_per_node": 2}, ["num_ranks 9 does not fit"]),
]

#: A valid task before and after the bad ones, then each bad one, in one SDK session.
KEEPS_SERVING = """
results = {{"before": run({good!r}, "echo ok-$PARSL_NUM_RANKS")}}
results["bad"] = [run(spec, "echo should-not-run") for spec in {bad!r}]
results["after"] = run({good!r}, "echo ok-$PARSL_NUM_RANKS")
print(json.dumps(results))
"""


def test_bad_resource_specifications_fail_their_task_and_the_engine_keeps_serving(
    hpc: HpcStack, endpoint_factory: StartEndpoint, mpich: None
) -> None:
    name = "mpi-bad-spec"
    ep = endpoint_factory(name, srun_config(name))
    bad = [spec for spec, _ in BAD_SPECS]
    snippet = PRELUDE.format(ep=ep) + KEEPS_SERVING.format(good=SPEC, bad=bad)
    results: dict[str, Any] = hpc.run_sdk(snippet, name, timeout=1000)

    for key in ("before", "after"):
        assert results[key].get("returncode") == 0, results
        assert results[key]["stdout"].splitlines() == ["ok-4"] * RANKS, results
    for (spec, fragments), result in zip(BAD_SPECS, results["bad"], strict=True):
        error = result.get("error", "")
        assert "ResourceSpecificationNotSupported" in error or "not valid" in error, (spec, result)
        for fragment in fragments:
            assert fragment in error, (spec, fragment, result)
        print(f"\n[hpc] {name}: {spec!r} -> {error.strip().splitlines()[-1]}")
