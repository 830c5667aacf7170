"""A task that exhausts its container's memory (reliability case 4), under docker.

The worker runs in a container limited to 128 MiB (``--memory 128m --memory-swap 128m``, so
no swap either) and the task tries to fill 1 GiB: the kernel's out-of-memory killer ends
the container's process, ``docker run`` exits with 137, and the engine must answer that task
with one ``WorkerLost`` Result that names the cause, within seconds, while a task running
beside it on the other worker finishes and the engine goes on serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from endpoint.engines.base import Engine
from endpoint.engines.build import build_engine_from_dict
from tests.containers.conftest import labelled_containers
from tests.containers.images import ImageSet
from tests.unit.test_engines import EPID, Results, add, ok, submission, wait_until

LIMIT_MIB = 128
#: Well inside the limit for a worker (an idle one uses ~30 MiB), and well outside for a hog.
OPTIONS = f"--memory {LIMIT_MIB}m --memory-swap {LIMIT_MIB}m"
CAUSE = (
    "exited with code 137: the process in its container was killed by SIGKILL (signal 9),"
    " possibly by the out-of-memory killer"
)


def hog(mib: int) -> str:
    chunks: list[bytes] = []
    for _ in range(mib // 64):
        chunks.append(b"x" * (64 << 20))  # written, so every page is really used
    return f"allocated {len(chunks) * 64} MiB and was not stopped"


def memory_limit() -> int:
    import time

    time.sleep(1.0)  # still running while the hog dies beside it
    for path in (
        "/sys/fs/cgroup/memory.max",  # cgroup v2
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
    ):
        try:
            with open(path) as f:
                return int(f.read())
        except (OSError, ValueError):
            continue
    return -1


@pytest.fixture
def engine(images: ImageSet, tmp_path: Path) -> Iterator[tuple[Engine, Results]]:
    spec: dict[str, Any] = {
        "type": "ProcessPoolEngine",
        "max_workers": 2,
        "container_type": "docker",
        "container_uri": images.worker,
        "container_cmd_options": OPTIONS,
    }
    results = Results()
    engine = build_engine_from_dict(spec)
    engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
    try:
        yield engine, results
    finally:
        engine.shutdown(wait=True)
        assert not results.duplicates
        assert labelled_containers("docker") == [], "docker containers left behind"


def test_a_task_that_exhausts_its_containers_memory_fails_with_the_cause(
    engine: tuple[Engine, Results],
) -> None:
    pool, results = engine
    assert pool.wait_ready(120) and pool.failure() is None
    wait_until(lambda: pool.status()["idle_workers"] == 2, timeout=120)
    doomed, beside = submission(hog, 1024), submission(memory_limit)
    pool.submit(doomed)
    pool.submit(beside)

    (failure,) = results.wait(doomed.task_id, timeout=60)  # a deadline, not a figure
    assert failure.error_details is not None, failure.data
    assert failure.error_details["code"] == "WorkerLost"
    assert "attempt 1: worker process" in failure.data and "attempt 2" not in failure.data
    assert CAUSE in failure.data, failure.data

    # The other worker, under the same limit, finished its task untouched.
    assert ok(results.wait(beside.task_id, timeout=60)[0]) == LIMIT_MIB << 20
    # A replacement worker starts and the engine goes on serving.
    after = [submission(add, i) for i in range(3)]
    for sub in after:
        pool.submit(sub)
    assert [ok(r) for r in results.wait(*(s.task_id for s in after), timeout=120)] == [2, 3, 4]
    wait_until(lambda: pool.status()["idle_workers"] == 2, timeout=120)
    assert len(results.by_id) == 5  # exactly one Result per task
