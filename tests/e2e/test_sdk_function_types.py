"""The official SDK's own callables on our endpoint's workers (issue 14, item 5).

A `ShellFunction` is an object of the SDK's class, pickled by the SDK: the workers unpickle it,
so their environment carries the official SDK as a library for user code (a dependency of the
package; the endpoint's own code never imports it). Checked on the thread, process and
GlobusComputeEngine (HTEX) engines: stdout, stderr, return code, keyword formatting,
`snippet_lines`, `walltime` and `return_dict`. The engines run each task in its own sandbox
(`run_in_sandbox: true`, which sets `GC_TASK_SANDBOX_DIR` as the official endpoint does), where
the SDK's ShellFunction writes its output files; without it the SDK adds a warning to stderr.
"""

from __future__ import annotations

import pytest

from devstack.stack import Stack
from tests.e2e.conftest import SdkRunner

ENGINES = {
    "thread": "engine:\n  type: ThreadPoolEngine\n  max_workers: 2\n  run_in_sandbox: true\n",
    "process": "engine:\n  type: ProcessPoolEngine\n  max_workers: 2\n  run_in_sandbox: true\n",
    "htex": (
        "engine:\n  type: GlobusComputeEngine\n  max_workers_per_node: 2\n  run_in_sandbox: true\n"
        "  address: 127.0.0.1\n  provider:\n    type: LocalProvider\n"
        "    init_blocks: 1\n    min_blocks: 0\n    max_blocks: 1\n"
    ),
}

SNIPPET = """
import json
from globus_compute_sdk import Executor, ShellFunction
EP = {ep!r}
with Executor(endpoint_id=EP) as ex:
    plain = ex.submit(ShellFunction("echo out-{{word}}; echo err-{{word}} >&2; exit 3"),
                      word="hi").result(timeout=120)
    tail = ex.submit(ShellFunction("seq 1 50", snippet_lines=5)).result(timeout=120)
    slow = ex.submit(ShellFunction("sleep 30; echo late", walltime=1)).result(timeout=120)
    as_dict = ex.submit(ShellFunction("echo d", return_dict=True)).result(timeout=120)
print(json.dumps({{
    "type": type(plain).__name__,
    "returncode": plain.returncode, "stdout": plain.stdout, "stderr": plain.stderr,
    "cmd": plain.cmd,
    "tail": tail.stdout.split(),
    "slow": [slow.returncode, slow.exception_name, "late" in slow.stdout],
    "as_dict": [type(as_dict).__name__, as_dict.get("stdout"), as_dict.get("returncode")],
}}))
"""


@pytest.fixture(scope="module", params=sorted(ENGINES))
def endpoint(request: pytest.FixtureRequest, stack: Stack) -> str:
    name = f"fn-{request.param}"
    stack.configure_endpoint(
        name, f"display_name: {name}\nheartbeat_period: 5\n" + ENGINES[name[3:]]
    )
    return stack.start_endpoint(name)


def test_a_shell_function_runs_on_every_engine(endpoint: str, run_sdk: SdkRunner) -> None:
    out = run_sdk(SNIPPET.format(ep=endpoint))
    assert out["type"] == "ShellResult"
    assert out["returncode"] == 3
    assert out["stdout"].strip() == "out-hi" and out["stderr"].strip() == "err-hi"
    assert out["cmd"] == "echo out-hi; echo err-hi >&2; exit 3"
    assert out["tail"] == [str(i) for i in range(46, 51)]  # the last 5 lines only
    # The SDK's walltime: the command is stopped and the result says so (return code 124).
    assert out["slow"] == [124, "subprocess.TimeoutExpired", False]
    assert out["as_dict"] == ["dict", "d\n", 0]


MPI_SNIPPET = """
import json
from globus_compute_sdk import Executor, MPIFunction
with Executor(endpoint_id={ep!r}) as ex:
    res = ex.submit(MPIFunction("echo ranks-{{n}} prefix=[$PARSL_MPI_PREFIX]"), n=1).result(
        timeout=120
    )
print(json.dumps([type(res).__name__, res.returncode, res.stdout]))
"""


def test_an_mpi_function_runs_as_one_process_on_every_engine(
    endpoint: str, run_sdk: SdkRunner
) -> None:
    """An `MPIFunction` unpickles and runs on every engine; without GlobusMPIEngine there is no
    launcher prefix, so its command runs once (tests/hpc/test_mpi.py runs ranks on two nodes)."""
    kind, returncode, stdout = run_sdk(MPI_SNIPPET.format(ep=endpoint))
    assert (kind, returncode, stdout.strip()) == ("ShellResult", 0, "ranks-1 prefix=[]")
