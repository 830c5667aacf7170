"""One contract suite over every engine: thread pool, process pool and GlobusComputeEngine.

Real processes throughout (GlobusComputeEngine runs Parsl's interchange and a LocalProvider
block on loopback). Each engine kind is started once per module and shared by the tests;
every engine runs with ``max_retries_on_system_failure=1``, ``working_dir="work"`` and
``run_in_sandbox=True``, under ``GC_TASK_TIMEOUT`` (set before any worker starts, because
workers inherit the endpoint's environment).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from endpoint.engines.base import Engine
from endpoint.engines.build import build_engine_from_dict
from endpoint.engines.htex.engine import GlobusComputeEngine
from tests.processes import descendants_running
from tests.unit.test_engines import (
    EPID,
    Results,
    add,
    kill_own_worker,
    nap,
    ok,
    raises,
    submission,
    wait_for_file,
    wait_until,
)

KINDS = ["ThreadPoolEngine", "ProcessPoolEngine", "GlobusComputeEngine"]
#: Engines whose workers are separate processes: a worker can die without the endpoint.
PROCESS_KINDS = ["ProcessPoolEngine", "GlobusComputeEngine"]
TASK_TIMEOUT_S = 3.0

COMMON: dict[str, Any] = {
    "max_retries_on_system_failure": 1,
    "working_dir": "work",
    "run_in_sandbox": True,
}
OPTIONS: dict[str, dict[str, Any]] = {
    "ThreadPoolEngine": {"max_workers": 2},
    "ProcessPoolEngine": {"max_workers": 2},
    "GlobusComputeEngine": {
        "max_workers_per_node": 2,
        "address": "127.0.0.1",
        # Parsl's worker watchdog looks for dead workers once per heartbeat period.
        "heartbeat_period": 1,
        "provider": {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 0, "max_blocks": 1},
        "job_status_kwargs": {"strategy_period": 0.5},
    },
}

# ---- task functions (sent as source text; each imports what it uses) ----------------------


def where_am_i() -> tuple[str, str | None, str | None]:
    import os

    return os.getcwd(), os.environ.get("GC_TASK_SANDBOX_DIR"), os.environ.get("GC_TASK_UUID")


def spin(seconds: float) -> str:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:  # short sleeps: interruptible in any engine's thread
        time.sleep(0.01)
    return "finished"


def dies_once(marker: str) -> str:
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return "second time lucky"


# ---- shared engines -----------------------------------------------------------------------


@dataclass
class Started:
    engine: Engine
    results: Results
    run_dir: Path

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float = 30) -> Any:
        sub = submission(fn, *args)
        self.engine.submit(sub)
        return self.results.wait(sub.task_id, timeout=timeout)[0]


class Engines:
    """Starts each kind on first use; shuts them all down at the end of the module."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self._tmp = tmp
        self._started: dict[str, Started] = {}

    def get(self, kind: str) -> Started:
        if kind not in self._started:
            run_dir = self._tmp.mktemp(kind)
            results = Results()
            engine = build_engine_from_dict({"type": kind, **COMMON, **OPTIONS[kind]})
            engine.start(endpoint_id=EPID, run_dir=run_dir, on_result=results)
            self._started[kind] = Started(engine, results, run_dir)
        return self._started[kind]

    def close(self) -> None:
        for started in self._started.values():
            started.engine.shutdown(wait=True)
            assert not started.results.duplicates


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GC_TASK_TIMEOUT", str(TASK_TIMEOUT_S))
        shared = Engines(tmp_path_factory)
        try:
            yield shared
        finally:
            shared.close()


@pytest.fixture(params=KINDS)
def started(request: pytest.FixtureRequest, engines: Engines) -> Started:
    return engines.get(request.param)


@pytest.fixture(params=PROCESS_KINDS)
def started_processes(request: pytest.FixtureRequest, engines: Engines) -> Started:
    return engines.get(request.param)


# ---- the contract -------------------------------------------------------------------------


def test_results_round_trip_exactly_once(started: Started) -> None:
    subs = [submission(add, i, b=i) for i in range(200)]
    for sub in subs:
        started.engine.submit(sub)
    got = started.results.wait(*(s.task_id for s in subs))
    assert [ok(r) for r in got] == [2 * i for i in range(200)]
    assert not started.results.duplicates


def test_user_exception_is_an_error_result_not_a_retry(started: Started) -> None:
    result = started.run(raises)
    assert result.error_details is not None
    assert result.error_details["code"] == "RemoteExecutionError"
    assert "ValueError: user error, not a system failure" in result.data
    assert "attempt" not in result.data


def test_killed_worker_is_retried(started_processes: Started, tmp_path: Path) -> None:
    result = started_processes.run(dies_once, str(tmp_path / "marker"))
    assert ok(result) == "second time lucky"


def test_worker_killed_on_every_attempt_lists_each_attempt(started_processes: Started) -> None:
    result = started_processes.run(kill_own_worker)
    assert result.error_details is not None
    assert result.error_details["code"] == "WorkerLost"
    assert "attempt 1:" in result.data and "attempt 2:" in result.data
    assert "attempt 3" not in result.data
    assert "max_retries_on_system_failure=1" in result.data
    assert result.task_statuses is not None
    assert [s["state"] for s in result.task_statuses] == ["waiting-for-launch", "execution-end"]
    # The engine carries on with a replacement worker.
    assert ok(started_processes.run(add, 40)) == 42


def test_task_timeout(started: Started) -> None:
    # Ten minutes of work: a result inside the deadline means the timeout interrupted it.
    result = started.run(spin, 600, timeout=120)
    assert result.error_details is not None
    assert result.error_details["code"] == "TaskTimeout"
    assert f"GC_TASK_TIMEOUT of {TASK_TIMEOUT_S:g} seconds" in result.data


def test_sandbox_dir_under_working_dir_relative_to_run_dir(started: Started) -> None:
    sub = submission(where_am_i)
    started.engine.submit(sub)
    cwd, sandbox, task_env = ok(started.results.wait(sub.task_id)[0])
    expected = str((started.run_dir / "work" / sub.task_id).resolve())
    assert cwd == expected and sandbox == expected and task_env == sub.task_id
    assert Path(expected).is_dir()


def test_status_reports_outstanding_and_idle_workers(started: Started, tmp_path: Path) -> None:
    engine = started.engine
    wait_until(lambda: engine.status()["idle_workers"] == 2)
    gate = tmp_path / "gate"
    subs = [submission(wait_for_file, str(gate)) for _ in range(5)]
    for sub in subs:
        engine.submit(sub)
    wait_until(lambda: engine.status()["idle_workers"] == 0)
    status = engine.status()
    assert status["outstanding_tasks"] == 5
    assert 3 <= status["pending_tasks"] <= 5
    gate.touch()
    assert [ok(r) for r in started.results.wait(*(s.task_id for s in subs))] == ["released"] * 5
    wait_until(lambda: engine.status()["outstanding_tasks"] == 0)
    wait_until(lambda: engine.status()["idle_workers"] == 2)
    assert engine.status()["pending_tasks"] == 0


def test_status_fields(started: Started) -> None:
    status = started.engine.status()
    common = {
        "total_workers",
        "idle_workers",
        "pending_tasks",
        "outstanding_tasks",
        "scaling_enabled",
        "max_blocks",
        "min_blocks",
        "max_workers_per_node",
        "nodes_per_block",
        "engine_type",
    }
    assert common <= status.keys()
    assert status["engine_type"] == type(started.engine).__name__
    if isinstance(started.engine, GlobusComputeEngine):
        official = {
            "managers",
            "active_managers",
            "total_tasks",
            "mem_per_worker",
            "cores_per_worker",
            "prefetch_capacity",
            "node_info",
            "provider_type",
            "queue",
            "account",
        }
        assert official | {"running_tasks", "blocks"} <= status.keys()
        assert status["managers"] == status["active_managers"] == 1
        assert status["total_workers"] == 2 and status["max_workers_per_node"] == 2
        assert status["provider_type"] == "LocalProvider" and status["max_blocks"] == 1
        assert status["total_tasks"] > 0
        (workers,) = status["node_info"].values()
        assert workers[0]["worker_count"] == 2 and workers[0]["parsl_version"]


@pytest.mark.parametrize("kind", KINDS)
def test_shutdown_wait_delivers_every_result(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GC_TASK_TIMEOUT", raising=False)
    results = Results()
    engine = build_engine_from_dict({"type": kind, **OPTIONS[kind]})
    engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
    subs = [submission(nap, 0.05) for _ in range(10)]
    for sub in subs:
        engine.submit(sub)
    engine.shutdown(wait=True)
    assert {s.task_id for s in subs} == results.by_id.keys()
    assert not results.duplicates


# ---- failure: one question, forwarded by every wrapper -------------------------------------


@pytest.mark.parametrize("routed", [False, True], ids=["plain", "behind-routing"])
def test_a_dead_interchange_is_the_engines_failure(
    tmp_path: Path, routed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`failure()` is how the runtime learns to replace an engine; a `RoutingEngine` must
    answer for its default pool (it did not: issue 12's drift bug 2)."""
    import signal

    import psutil

    routing = {"container_type": "docker", "container_routing": "soft"} if routed else {}
    engine = build_engine_from_dict(
        {"type": "GlobusComputeEngine", **OPTIONS["GlobusComputeEngine"], **routing}
    )

    def interchanges() -> set[psutil.Process]:
        return set(descendants_running("interchange"))

    others = interchanges()  # the module's shared GlobusComputeEngine may be running
    results = Results()
    engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
    try:
        sub = submission(add, 1, 2)
        engine.submit(sub)
        assert ok(results.wait(sub.task_id, timeout=60)[0]) == 3
        assert engine.failure() is None
        found = list(interchanges() - others)
        assert len(found) == 1, found
        found[0].send_signal(signal.SIGKILL)
        wait_until(lambda: engine.failure() is not None, timeout=60)
        failure = engine.failure()
        assert failure is not None and "interchange" in failure.reason.lower(), failure
    finally:
        engine.shutdown(wait=False)
