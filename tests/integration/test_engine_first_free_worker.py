"""The first free worker takes queued work: no task waits behind a busy worker.

Real engines with real workers (processes for ProcessPoolEngine). One long task holds its
worker until a gate file appears; quick tasks submitted around it must all finish on the other
worker while the gate is still closed. The engine used to prefetch the next small task onto a
busy worker, where it waited out the long task while the other worker sat idle.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoint.engines.base import Engine
from endpoint.engines.build import build_engine_from_dict
from tests.unit.test_engines import EPID, Results, add, ok, submission, wait_until

KINDS = ["ProcessPoolEngine", "ThreadPoolEngine"]
QUICK_TASKS = 20
# Generous: only a task stuck behind the gated one (which never ends before the gate opens)
# can miss it.
DEADLINE_S = 120.0


def gated(started: str, gate: str) -> str:
    import os
    import time

    open(started, "w").close()
    while not os.path.exists(gate):
        time.sleep(0.01)
    return "released"


@pytest.fixture(params=KINDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, Results]]:
    results = Results()
    built = build_engine_from_dict({"type": request.param, "max_workers": 2})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    built.start(endpoint_id=EPID, run_dir=run_dir, on_result=results)
    try:
        wait_until(lambda: built.status()["idle_workers"] == 2, timeout=DEADLINE_S)
        yield built, results
    finally:
        (tmp_path / "gate").touch()  # never leave a worker spinning on a failed test
        built.shutdown(wait=True)
    assert not results.duplicates


def test_quick_tasks_finish_while_a_long_task_holds_its_worker(
    engine: tuple[Engine, Results], tmp_path: Path
) -> None:
    eng, results = engine
    started, gate = tmp_path / "started", tmp_path / "gate"
    long = submission(gated, str(started), str(gate))
    # A burst: one quick task before the long one, the rest after it, all queued at once.
    quick = [submission(add, i) for i in range(QUICK_TASKS)]
    eng.submit(quick[0])
    eng.submit(long)
    for sub in quick[1:]:
        eng.submit(sub)

    answers = results.wait(*(s.task_id for s in quick), timeout=DEADLINE_S)

    assert [ok(r) for r in answers] == [i + 2 for i in range(QUICK_TASKS)]
    assert started.exists() and not gate.exists()
    assert long.task_id not in results.by_id
    status = eng.status()
    assert (status["outstanding_tasks"], status["pending_tasks"]) == (1, 0)
    # A second wave, one task at a time, still passes the long task on the free worker.
    for i in range(3):
        sub = submission(add, 100 + i)
        eng.submit(sub)
        assert ok(results.wait(sub.task_id, timeout=DEADLINE_S)[0]) == 102 + i
    assert long.task_id not in results.by_id

    gate.touch()
    assert ok(results.wait(long.task_id, timeout=DEADLINE_S)[0]) == "released"
    wait_until(lambda: eng.status()["idle_workers"] == 2, timeout=DEADLINE_S)
