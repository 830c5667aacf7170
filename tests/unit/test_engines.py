"""Thread and process engines: exactly-once results, status, crashes, retries, shutdown."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from endpoint.config.engines import ProcessPoolEngineConfig, ThreadPoolEngineConfig
from endpoint.engines.base import Engine, TaskSubmission
from endpoint.engines.build import ENGINE_TYPES, build_engine, build_engine_from_dict
from endpoint.engines.process import ProcessPoolEngine
from endpoint.engines.thread import ThreadPoolEngine
from endpoint.errors import ConfigError, LifecycleError
from endpoint.protocol.messages import Result, Task, pack, unpack_as
from endpoint.protocol.serialize import BY_NAME, deserialize, pack_buffers, serialize

EPID = "419ee7ef-2ae2-41c6-8460-96b9b2f43891"
CONCRETES = "globus_compute_sdk.serialize.concretes"


# Task functions travel as source text (PureSourceTextInspect), so worker processes need not
# import this test module; each imports what it uses.


def add(a: int, b: int = 2) -> int:
    return a + b


def pid_and_cwd() -> tuple[int, str]:
    import os

    return os.getpid(), os.getcwd()


def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def kill_own_worker() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def hard_exit() -> None:
    import os

    os._exit(7)


def dies_once(marker: str) -> str:
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return "second time lucky"


def raises() -> None:
    raise ValueError("user error, not a system failure")


def wait_for_file(path: str) -> str:
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


# ---- helpers ------------------------------------------------------------------------------


def submission(fn: Any, *args: Any, **kwargs: Any) -> TaskSubmission:
    task_id = str(uuid.uuid4())
    code = BY_NAME["PureSourceTextInspect"].serialize(fn)
    buffer = pack_buffers([code, serialize(args), serialize(kwargs)])
    return TaskSubmission(task_id, pack(Task(task_id=task_id, task_buffer=buffer)), [])


class Results:
    """Collects results and fails loudly on a second result for one task."""

    def __init__(self) -> None:
        self.by_id: dict[str, Result] = {}
        self.duplicates: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, task_id: str, packed: bytes) -> None:
        with self._cond:
            if task_id in self.by_id:
                self.duplicates.append(task_id)
            self.by_id[task_id] = unpack_as(packed, Result)
            self._cond.notify_all()

    def wait(self, *task_ids: str, timeout: float = 30) -> list[Result]:
        with self._cond:
            assert self._cond.wait_for(lambda: all(t in self.by_id for t in task_ids), timeout), (
                f"missing results: {set(task_ids) - self.by_id.keys()}"
            )
            assert not self.duplicates
            return [self.by_id[t] for t in task_ids]


def ok(result: Result) -> Any:
    assert result.error_details is None, result.data
    return deserialize(result.data)


def wait_until(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def results() -> Results:
    return Results()


@pytest.fixture
def start(tmp_path: Path, results: Results) -> Iterator[Any]:
    """start(kind, **kwargs) -> a started engine, shut down after the test."""
    engines: list[Engine] = []

    def _start(kind: str, **kwargs: Any) -> Any:
        engine = build_engine_from_dict({"type": kind, **kwargs})
        engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
        engines.append(engine)
        return engine

    yield _start
    for engine in engines:
        engine.shutdown(wait=False)


KINDS = ["ThreadPoolEngine", "ProcessPoolEngine"]


# ---- both engines -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_result_arrives_exactly_once(start: Any, results: Results, kind: str) -> None:
    engine = start(kind, max_workers=2)
    subs = [submission(add, i, b=i) for i in range(60)]
    for sub in subs:
        engine.submit(sub)
    got = results.wait(*(s.task_id for s in subs))
    assert [ok(r) for r in got] == [2 * i for i in range(60)]
    engine.shutdown(wait=True)
    assert not results.duplicates and len(results.by_id) == 60


@pytest.mark.parametrize("kind", KINDS)
def test_user_errors_are_results_not_retries(start: Any, results: Results, kind: str) -> None:
    engine = start(kind, max_workers=1, max_retries_on_system_failure=3)
    sub = submission(raises)
    engine.submit(sub)
    (result,) = results.wait(sub.task_id)
    assert result.error_details is not None
    assert result.error_details["code"] == "RemoteExecutionError"
    assert "ValueError: user error" in result.data


@pytest.mark.parametrize("kind", KINDS)
def test_status_counts(start: Any, results: Results, tmp_path: Path, kind: str) -> None:
    engine = start(kind, max_workers=2)
    wait_until(lambda: engine.status()["idle_workers"] == 2)
    gate = str(tmp_path / "gate")
    subs = [submission(wait_for_file, gate) for _ in range(5)]
    for sub in subs:
        engine.submit(sub)
    wait_until(lambda: engine.status()["idle_workers"] == 0)
    status = engine.status()
    assert status["outstanding_tasks"] == 5
    assert status["pending_tasks"] == 3  # two are running
    Path(gate).touch()
    results.wait(*(s.task_id for s in subs))
    wait_until(lambda: engine.status()["outstanding_tasks"] == 0)
    status = engine.status()
    assert status["pending_tasks"] == 0 and status["idle_workers"] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_status_shape_before_start(kind: str) -> None:
    status = build_engine_from_dict({"type": kind, "max_workers": 3}).status()
    assert status == {
        "total_cores": os.cpu_count(),
        "total_mem": status["total_mem"],
        "total_core_hrs": 0,
        "total_workers": 3,
        "pending_tasks": 0,
        "outstanding_tasks": 0,
        "idle_workers": 0 if kind == "ProcessPoolEngine" else 3,
        "scaling_enabled": False,
        "max_blocks": 1,
        "min_blocks": 1,
        "max_workers_per_node": 3,
        "nodes_per_block": 1,
        "engine_type": kind,
    }
    assert isinstance(status["total_mem"], float) and status["total_mem"] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_resource_specification_is_refused_with_a_result(
    start: Any, results: Results, kind: str
) -> None:
    engine = start(kind, max_workers=1)
    sub = submission(add, 1)
    sub.resource_specification = {"num_nodes": 2}
    engine.submit(sub)
    (result,) = results.wait(sub.task_id)
    assert result.error_details is not None
    assert result.error_details["code"] == "ResourceSpecificationNotSupported"
    assert "num_nodes" in result.data and kind in result.data
    plain = submission(add, 1)
    engine.submit(plain)
    assert ok(results.wait(plain.task_id)[0]) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_working_dir_and_sandbox(start: Any, results: Results, tmp_path: Path, kind: str) -> None:
    engine = start(kind, max_workers=1, working_dir="work", run_in_sandbox=True)
    sub = submission(pid_and_cwd)
    engine.submit(sub)
    _, cwd = ok(results.wait(sub.task_id)[0])
    assert cwd == str(tmp_path / "work" / sub.task_id)


@pytest.mark.parametrize("kind", KINDS)
def test_allowlist_is_enforced(start: Any, results: Results, kind: str) -> None:
    engine = start(
        kind, max_workers=1, allowed_serializers=[f"{CONCRETES}.DillCode", f"{CONCRETES}.JSONData"]
    )
    sub = submission(add, 1)  # source text, not DillCode
    engine.submit(sub)
    (result,) = results.wait(sub.task_id)
    assert result.error_details is not None
    assert result.error_details["code"] == "DeserializationError"
    assert "PureSourceTextInspect" in result.data


@pytest.mark.parametrize("kind", KINDS)
def test_lifecycle_errors(tmp_path: Path, kind: str) -> None:
    engine = build_engine_from_dict({"type": kind, "max_workers": 1})
    with pytest.raises(LifecycleError, match="not started"):
        engine.submit(submission(add, 1))
    engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=lambda *_: None)
    engine.shutdown(wait=True)
    with pytest.raises(LifecycleError, match="shut down"):
        engine.submit(submission(add, 1))


@pytest.mark.parametrize("kind", KINDS)
def test_shutdown_wait_finishes_everything(tmp_path: Path, results: Results, kind: str) -> None:
    engine = build_engine_from_dict({"type": kind, "max_workers": 2})
    engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
    subs = [submission(nap, 0.05) for _ in range(6)]
    for sub in subs:
        engine.submit(sub)
    engine.shutdown(wait=True)
    assert len(results.by_id) == 6 and not results.duplicates


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_callback_does_not_stop_the_engine(tmp_path: Path, kind: str) -> None:
    seen: list[str] = []

    def flaky(task_id: str, packed: bytes) -> None:
        seen.append(task_id)
        if len(seen) == 1:
            raise RuntimeError("consumer bug")

    engine = build_engine_from_dict({"type": kind, "max_workers": 1})
    engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=flaky)
    for _ in range(3):
        engine.submit(submission(add, 1))
    engine.shutdown(wait=True)
    assert len(seen) == 3


# ---- process engine: system failures ------------------------------------------------------


@pytest.mark.parametrize("fn", [kill_own_worker, hard_exit])
def test_worker_killed_mid_task(start: Any, results: Results, fn: Any) -> None:
    engine = start("ProcessPoolEngine", max_workers=2)
    doomed = submission(fn)
    others = [submission(nap, 0.01) for _ in range(10)]
    engine.submit(doomed)
    for sub in others:
        engine.submit(sub)
    (failure,) = results.wait(doomed.task_id)
    assert failure.error_details is not None
    assert failure.error_details["code"] == "WorkerLost"
    reason = (
        "killed by SIGKILL (signal 9), possibly by the out-of-memory killer"
        if fn is kill_own_worker
        else "exited with code 7"
    )
    assert "attempt 1: worker process " in failure.data
    assert "died while running the task: it" in failure.data and reason in failure.data
    assert [ok(r) for r in results.wait(*(s.task_id for s in others))] == [0.01] * 10
    # The engine keeps working, with its full complement of workers.
    after = [submission(add, i) for i in range(4)]
    for sub in after:
        engine.submit(sub)
    assert [ok(r) for r in results.wait(*(s.task_id for s in after))] == [2, 3, 4, 5]
    wait_until(lambda: engine.status()["idle_workers"] == 2)
    assert not results.duplicates


OOM = "killed by SIGKILL (signal 9), possibly by the out-of-memory killer"


@pytest.mark.parametrize(
    ("container", "returncode", "expected"),
    [
        (False, -9, f"was {OOM} (the task may have run out of memory)"),
        (False, -15, "was killed by SIGTERM (signal 15)"),
        (False, 7, "exited with code 7"),
        (True, 137, f"exited with code 137: the process in its container was {OOM}"),
        (True, 143, "exited with code 143: the process in its container was killed by SIGTERM"),
        (True, 125, "exited with code 125"),
        (True, -9, f"was {OOM}"),
    ],
)
def test_a_worker_exit_names_its_cause(container: bool, returncode: int, expected: str) -> None:
    from endpoint.containers.spec import ContainerSpec
    from endpoint.engines.process_launch import ContainerLauncher, LocalLauncher

    launcher = ContainerLauncher(ContainerSpec("docker", "img")) if container else LocalLauncher()
    text = launcher.describe_exit(returncode)
    assert text.startswith(expected)
    assert ("out-of-memory" in text) == ("SIGKILL" in text)


def test_retries_until_exhausted(start: Any, results: Results) -> None:
    engine = start("ProcessPoolEngine", max_workers=1, max_retries_on_system_failure=2)
    doomed = submission(hard_exit)
    engine.submit(doomed)
    (failure,) = results.wait(doomed.task_id)
    assert failure.error_details is not None
    assert failure.error_details["code"] == "WorkerLost"
    for attempt in (1, 2, 3):
        assert f"attempt {attempt}: worker process" in failure.data
    assert "attempt 4" not in failure.data
    assert "max_retries_on_system_failure=2" in failure.data
    assert failure.task_statuses is not None
    assert [s["state"] for s in failure.task_statuses] == ["waiting-for-launch", "execution-end"]


def test_retry_succeeds(start: Any, results: Results, tmp_path: Path) -> None:
    engine = start("ProcessPoolEngine", max_workers=1, max_retries_on_system_failure=1)
    sub = submission(dies_once, str(tmp_path / "marker"))
    engine.submit(sub)
    assert ok(results.wait(sub.task_id)[0]) == "second time lucky"


def test_queued_tasks_do_not_pay_for_a_crash(start: Any, results: Results) -> None:
    # One worker, no retries: the task queued (even prefetched) behind the crash must run.
    engine = start("ProcessPoolEngine", max_workers=1)
    wait_until(lambda: engine.status()["idle_workers"] == 1)
    doomed, behind = submission(hard_exit), [submission(add, i) for i in range(3)]
    for sub in [doomed, *behind]:
        engine.submit(sub)
    assert results.wait(doomed.task_id)[0].error_details is not None
    assert [ok(r) for r in results.wait(*(s.task_id for s in behind))] == [2, 3, 4]


def test_max_tasks_per_child_recycles_workers(start: Any, results: Results) -> None:
    engine = start("ProcessPoolEngine", max_workers=1, max_tasks_per_child=1)
    subs = [submission(pid_and_cwd) for _ in range(3)]
    for sub in subs:
        engine.submit(sub)
    pids = {ok(r)[0] for r in results.wait(*(s.task_id for s in subs))}
    assert len(pids) == 3


def test_timeout_interrupts_sleep_in_a_worker(
    start: Any, results: Results, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GC_TASK_TIMEOUT", "0.5")  # workers inherit the endpoint's environment
    engine = start("ProcessPoolEngine", max_workers=1)
    # An hour's nap: only the timeout can end it before results.wait's deadline.
    sub = submission(nap, 3600)
    engine.submit(sub)
    (result,) = results.wait(sub.task_id)
    assert result.error_details is not None and result.error_details["code"] == "TaskTimeout"


def test_shutdown_without_wait_stops_running_workers(tmp_path: Path, results: Results) -> None:
    engine = ProcessPoolEngine(ProcessPoolEngineConfig(max_workers=1))
    engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
    sub = submission(pid_and_cwd)
    engine.submit(sub)
    pid = ok(results.wait(sub.task_id)[0])[0]
    napping = submission(nap, 3600)
    engine.submit(napping)
    engine.shutdown(wait=False)  # must not wait for the hour-long task

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, timeout=10)
    assert napping.task_id not in results.by_id  # stopped, not finished


def test_workers_that_cannot_start_fail_tasks_instead_of_hanging(
    tmp_path: Path, results: Results, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broken interpreter environment: every worker dies before saying hello.
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    (tmp_path / "endpoint").mkdir()
    (tmp_path / "endpoint" / "__init__.py").write_text("raise SystemExit(5)\n")
    monkeypatch.setattr("endpoint.engines.process._worker_env", lambda: dict(os.environ))
    engine = ProcessPoolEngine(ProcessPoolEngineConfig(max_workers=1))
    engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
    sub = submission(add, 1)
    engine.submit(sub)
    (result,) = results.wait(sub.task_id)
    assert result.error_details is not None
    assert result.error_details["code"] == "EngineFailure"
    assert "exited with code 5" in result.data
    later = submission(add, 2)
    engine.submit(later)
    assert results.wait(later.task_id)[0].error_details is not None
    engine.shutdown(wait=True)


# ---- construction -------------------------------------------------------------------------


def test_defaults() -> None:
    # The engine model holds the defaults; the engines only fill in what None leaves open.
    assert ThreadPoolEngine(ThreadPoolEngineConfig()).max_workers == min(
        32, (os.cpu_count() or 1) + 4
    )
    assert ProcessPoolEngine(ProcessPoolEngineConfig()).max_workers == os.cpu_count()
    engine = ThreadPoolEngine(ThreadPoolEngineConfig())
    assert engine.working_dir == Path("tasks_working_dir")
    assert engine.max_retries == 0 and engine.result_size_limit == 10 * 1024 * 1024


def test_build_engine_takes_the_validated_model() -> None:
    config = ThreadPoolEngineConfig(max_workers=3, label="mine")
    engine = build_engine(config)
    assert isinstance(engine, ThreadPoolEngine)
    assert (engine.max_workers, engine.label) == (3, "mine")


def test_build_engine_unknown_type() -> None:
    with pytest.raises(ConfigError) as info:
        build_engine_from_dict({"type": "GlobusComputeEnginee"})
    assert "engine.type" in str(info.value) and "GlobusComputeEnginee" in str(info.value)
    for name in ENGINE_TYPES:
        assert name in str(info.value)
    # As in a config file, a mapping without type is a GlobusComputeEngine (features.md
    # §8.16), whose options do not include max_workers.
    with pytest.raises(ConfigError, match=r"engine\.max_workers: .*GlobusComputeEngine"):
        build_engine_from_dict({"max_workers": 1})


@pytest.mark.parametrize("kind", KINDS)
def test_build_engine_unknown_option(kind: str) -> None:
    with pytest.raises(ConfigError, match=r"engine\.max_wrokers: unknown key"):
        build_engine_from_dict({"type": kind, "max_wrokers": 2})


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"max_workers": 0}, "max_workers"),
        ({"max_workers": "four"}, "max_workers"),
        ({"max_retries_on_system_failure": -1}, "max_retries_on_system_failure"),
        ({"run_in_sandbox": "sometimes"}, "run_in_sandbox"),
        ({"allowed_serializers": ["globus_compute_sdk.*Code"]}, "allowed_serializers"),
        ({"allowed_serializers": ["bogus.Path", "globus_compute_sdk.*Data"]}, "bogus.Path"),
        ({"result_size_limit": 0}, "result_size_limit"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_build_engine_bad_values(kind: str, options: dict[str, Any], key: str) -> None:
    # Checked by the engine model, as in a config file (which reads "4" as 4, and "yes" as
    # true, the way pydantic does).
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_engine_from_dict({"type": kind, **options})


def test_process_only_options() -> None:
    assert build_engine_from_dict(
        {"type": "ProcessPoolEngine", "max_tasks_per_child": 5, "label": "x"}
    )
    with pytest.raises(ConfigError, match="max_tasks_per_child"):
        build_engine_from_dict({"type": "ThreadPoolEngine", "max_tasks_per_child": 5})
