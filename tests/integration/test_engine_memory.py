"""A task that exhausts memory in a ProcessPoolEngine worker on this host (reliability case 4).

Without a container there is no memory limit to hit safely (the host's OOM killer would
pick among every process on the machine), so the task sets one on its own worker process
(``RLIMIT_AS``, restored before it returns) and fills memory until the allocator refuses:
the task fails with ``MemoryError`` as a user error, not a lost worker, nothing is retried,
and the same worker process serves the next task. A worker that the OOM killer does kill
(SIGKILL) is covered by tests/unit/test_engines.py::test_worker_killed_mid_task and, inside
a memory-limited container, by tests/containers/test_memory.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoint.engines.base import Engine
from endpoint.engines.build import build_engine_from_dict
from tests.unit.test_engines import EPID, Results, ok, pid_and_cwd, submission

HEADROOM_MIB = 256


def exhaust_memory(headroom_mib: int) -> str:
    import resource

    with open("/proc/self/status") as f:
        vm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, ((vm_kib << 10) + (headroom_mib << 20), hard))
    chunks: list[bytes] = []
    try:
        while len(chunks) < 1024:  # 16 GiB: never reached under the limit
            chunks.append(b"x" * (16 << 20))
    finally:
        chunks.clear()
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return "the limit never stopped the task"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Engine, Results]]:
    results = Results()
    engine = build_engine_from_dict(
        {"type": "ProcessPoolEngine", "max_workers": 1, "max_retries_on_system_failure": 1}
    )
    engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
    try:
        yield engine, results
    finally:
        engine.shutdown(wait=True)
        assert not results.duplicates


def test_a_task_that_exhausts_its_memory_limit_fails_and_the_worker_survives(
    engine: tuple[Engine, Results],
) -> None:
    pool, results = engine
    first = submission(pid_and_cwd)
    pool.submit(first)
    pid = ok(results.wait(first.task_id, timeout=60)[0])[0]

    doomed = submission(exhaust_memory, HEADROOM_MIB)
    pool.submit(doomed)
    (failure,) = results.wait(doomed.task_id, timeout=60)  # a deadline, not a figure
    assert failure.error_details is not None, failure.data
    assert failure.error_details["code"] == "RemoteExecutionError"
    assert "MemoryError" in failure.data
    assert "attempt" not in failure.data  # a task's own failure is never retried

    after = submission(pid_and_cwd)
    pool.submit(after)
    assert ok(results.wait(after.task_id, timeout=60)[0])[0] == pid  # the same worker
    assert len(results.by_id) == 3
