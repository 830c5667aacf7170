"""execute_task: results, user errors, allowlist, sandbox, size limit, timeouts, bad input."""

from __future__ import annotations

import multiprocessing
import os
import platform
import sys
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import dill
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from endpoint.protocol.messages import Result, Task, pack, unpack_as
from endpoint.protocol.serialize import BY_NAME, deserialize, pack_buffers, serialize
from endpoint.worker import WorkerOptions, execute_task
from endpoint.worker.execute import SDK_PROTOCOL_VERSION

CONCRETES = "globus_compute_sdk.serialize.concretes"
EPID = "419ee7ef-2ae2-41c6-8460-96b9b2f43891"
# From wire-capture.log: the SDK's `boom()`, which raises ValueError("kaboom").
WIRE_BOOM_CODE = (
    "376\n01\ngASVCQEAAAAAAACMCmRpbGwuX2RpbGyUjBBfY3JlYXRlX2Z1bmN0aW9ulJOUKGgAjAxfY3JlYXRl\n"
    "X2NvZGWUk5QoQwICAZRLAEsASwBLAEsDSwNDIJcAdAEAAAAAAAAAAAAAZAGmAQAAqwEAAAAAAAAA\n"
    "AIIBlE6MBmthYm9vbZSGlIwKVmFsdWVFcnJvcpSFlCmMHS90bXAvcmVzZWFyY2gvZTJlL3Nka190\n"
    "ZXN0LnB5lIwEYm9vbZRoDEsIQxCAAN0KFJBY0Qoe1Aoe0AQelEMAlCkpdJRSlGNfX2J1aWx0aW5f\n"
    "XwpfX21haW5fXwpoDE5OdJRSlH2UfZSMD19fYW5ub3RhdGlvbnNfX5R9lHOGlGIu\n"
)
WIRE_EMPTY_ARGS = "12\n00\ngAQpLg==\n12\n00\ngAR9lC4=\n"


# ---- task functions -----------------------------------------------------------------------


def add(a: int, b: int = 2) -> int:
    return a + b


def where_am_i() -> tuple[str, str | None, str | None]:
    return os.getcwd(), os.environ.get("GC_TASK_SANDBOX_DIR"), os.environ.get("GC_TASK_UUID")


def fails_deeply(depth: int) -> None:
    if depth == 0:
        raise ValueError("kaboom from user code")
    fails_deeply(depth - 1)


def chained_failure() -> None:
    empty: dict[str, int] = {}
    try:
        empty["missing"]
    except KeyError as e:
        raise RuntimeError("wrapped") from e


def exits() -> None:
    sys.exit(3)


def big(n: int) -> str:
    return "x" * n


def pollutes_env() -> str:
    os.environ["TASK_LEFTOVER"] = "1"
    os.environ.pop("HOME", None)
    return "done"


def sleeps(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def spins(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "spun"


def swallows_everything(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        # User code that catches broadly must not eat the timeout.
        try:  # noqa: SIM105 (written the way users write it)
            sum(range(100))
        except Exception:
            pass
    return "spun"


# ---- helpers ------------------------------------------------------------------------------


def task_bytes(fn: Any, *args: Any, strategy: str = "DillCode", **kwargs: Any) -> bytes:
    code = BY_NAME[strategy].serialize(fn)
    buffer = pack_buffers([code, serialize(args), serialize(kwargs)])
    return pack(Task(task_id=str(uuid.uuid4()), task_buffer=buffer))


def run(
    options: WorkerOptions, fn: Any, *args: Any, serializers: list[str] | None = None, **kw: Any
) -> Result:
    task_id = str(uuid.uuid4())
    raw = execute_task(task_id, task_bytes(fn, *args, **kw), serializers or [], options)
    result = unpack_as(raw, Result)
    assert result.task_id == task_id
    return result


def value(result: Result) -> Any:
    assert result.error_details is None, result.data
    return deserialize(result.data)


@pytest.fixture
def options(tmp_path: Path) -> WorkerOptions:
    return WorkerOptions(endpoint_id=EPID, run_dir=str(tmp_path / "tasks"))


@pytest.fixture(autouse=True)
def _no_inherited_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GC_TASK_TIMEOUT", raising=False)


# ---- success ------------------------------------------------------------------------------


def test_success_result_shape(options: WorkerOptions) -> None:
    result = run(options, add, 40, b=2)
    assert result.data == "00\ngARLKi4=\n"  # byte-identical to the official worker's answer
    assert result.details == {
        "os": platform.platform(),
        "python_version": platform.python_version(),
        "dill_version": dill.__version__,
        "globus_compute_sdk_version": SDK_PROTOCOL_VERSION,
        "endpoint_id": EPID,
    }
    assert SDK_PROTOCOL_VERSION == "4.19.0"
    assert result.task_statuses is not None
    assert [(s["state"], s["actor"]) for s in result.task_statuses] == [
        ("execution-start", "worker"),
        ("execution-end", "worker"),
    ]
    start, end = (s["timestamp"] for s in result.task_statuses)
    assert start <= end


def test_kwargs_and_defaults(options: WorkerOptions) -> None:
    assert value(run(options, add, 1)) == 3
    assert value(run(options, add, a=5, b=6)) == 11


def test_source_strategies_run(options: WorkerOptions) -> None:
    assert value(run(options, add, 1, b=1, strategy="PureSourceTextInspect")) == 2
    assert value(run(options, add, 1, b=1, strategy="AllCodeStrategies")) == 2


def test_result_serializers_json(options: WorkerOptions) -> None:
    result = run(options, add, 1, serializers=[f"{CONCRETES}.JSONData"])
    assert result.data == "11\n3"


def test_unknown_result_serializer_is_an_error_result(options: WorkerOptions) -> None:
    result = run(options, add, 1, serializers=["my.own.Serializer"])
    assert result.error_details == {
        "code": "RemoteExecutionError",
        "user_message": "An error occurred during the execution of this task",
    }
    assert "my.own.Serializer" in result.data


# ---- user errors --------------------------------------------------------------------------


def test_exception_traceback_shows_only_user_frames(options: WorkerOptions) -> None:
    result = run(options, fails_deeply, 2)
    assert result.error_details == {
        "code": "RemoteExecutionError",
        "user_message": "An error occurred during the execution of this task",
    }
    assert result.data.startswith("Traceback (most recent call last):\n")
    assert result.data.endswith("ValueError: kaboom from user code\n")
    assert result.data.count("in fails_deeply") == 3
    assert "execute.py" not in result.data and "endpoint/worker" not in result.data


def test_chained_exceptions_are_kept(options: WorkerOptions) -> None:
    data = run(options, chained_failure).data
    assert "KeyError: 'missing'" in data
    assert "direct cause of the following exception" in data
    assert data.endswith("RuntimeError: wrapped\n")
    assert "execute.py" not in data


def test_wire_capture_boom(options: WorkerOptions) -> None:
    packed = pack(Task(task_id=str(uuid.uuid4()), task_buffer=WIRE_BOOM_CODE + WIRE_EMPTY_ARGS))
    result = unpack_as(execute_task(str(uuid.uuid4()), packed, [], options), Result)
    assert result.error_details is not None
    assert result.error_details["code"] == "RemoteExecutionError"
    assert result.data.endswith("ValueError: kaboom\n")
    assert "in boom" in result.data


def raises_undecodable() -> None:
    raise ValueError(b"caf\xe9".decode("utf-8", "surrogateescape"))


def test_unencodable_error_text_still_gives_a_result(options: WorkerOptions) -> None:
    result = run(options, raises_undecodable)
    assert result.error_details is not None
    assert "ValueError: caf" in result.data


def test_system_exit_is_reported_not_raised(options: WorkerOptions) -> None:
    result = run(options, exits)
    assert result.error_details is not None
    assert result.data.endswith("SystemExit: 3\n")


# ---- refusals and limits ------------------------------------------------------------------


def test_allowlist_refusal(tmp_path: Path) -> None:
    allowed = (f"{CONCRETES}.PureSourceDill", "globus_compute_sdk.*Data")
    options = WorkerOptions(EPID, str(tmp_path), allowed_serializers=allowed)
    result = run(options, add, 1)
    assert result.error_details is not None
    assert result.error_details["code"] == "DeserializationError"
    assert "DillCode" in result.data and "PureSourceDill" in result.data
    assert "Allowed serializers" in result.error_details["user_message"]
    assert value(run(options, add, 1, strategy="PureSourceDill")) == 3


def test_result_too_big(tmp_path: Path) -> None:
    options = WorkerOptions(EPID, str(tmp_path), result_size_limit=1000)
    assert value(run(options, big, 10)) == "x" * 10
    result = run(options, big, 5000)
    assert result.error_details is not None
    assert result.error_details["code"] == "MaxResultSizeExceeded"
    size = len(serialize("x" * 5000))
    assert f"{size}B" in result.data and "1000B" in result.data
    assert f"{size}B" in result.error_details["user_message"]


def test_default_limit_is_ten_mib(options: WorkerOptions) -> None:
    assert options.result_size_limit == 10 * 1024 * 1024
    result = run(options, big, 10 * 1024 * 1024)
    assert result.error_details is not None
    assert result.error_details["code"] == "MaxResultSizeExceeded"


@pytest.mark.parametrize(
    "body",
    [
        b"not a message",
        b"\x01{}",
        pack(Result(task_id=EPID, data="x")),
        pack(Task(task_id=EPID, task_buffer="2\n00")),
    ],
)
def test_bad_body_is_an_error_result(options: WorkerOptions, body: bytes) -> None:
    result = unpack_as(execute_task(EPID, body, [], options), Result)
    assert result.error_details is not None
    assert result.error_details["code"] in {"CouldNotExecuteUserTaskError", "DeserializationError"}
    assert result.data


def test_non_task_message_is_named(options: WorkerOptions) -> None:
    result = unpack_as(
        execute_task(EPID, pack(Result(task_id=EPID, data="x")), [], options), Result
    )
    assert result.error_details is not None
    assert result.error_details["code"] == "CouldNotExecuteUserTaskError"
    assert "Non Task-type message received: Result" in result.data


def test_relative_run_dir_is_an_error_result() -> None:
    result = run(WorkerOptions(EPID, "relative/dir"), add, 1)
    assert result.error_details is not None
    assert "absolute" in result.data


@settings(max_examples=100, deadline=None)
@given(hs.binary(max_size=200))
def test_fuzz_never_raises(body: bytes) -> None:
    options = WorkerOptions(EPID, "/tmp/gc-worker-fuzz")
    result = unpack_as(execute_task(EPID, b"\x01" + body, [], options), Result)
    assert result.task_statuses is not None


# ---- working directory and environment ----------------------------------------------------


def test_runs_in_run_dir_and_restores(options: WorkerOptions) -> None:
    before_cwd, before_env = os.getcwd(), dict(os.environ)
    cwd, sandbox, task_uuid = value(run(options, where_am_i))
    assert cwd == options.run_dir and sandbox is None and task_uuid
    assert os.getcwd() == before_cwd
    assert dict(os.environ) == before_env


def test_sandbox_dir(tmp_path: Path) -> None:
    options = WorkerOptions(EPID, str(tmp_path), run_in_sandbox=True)
    task_id = str(uuid.uuid4())
    raw = execute_task(task_id, task_bytes(where_am_i), [], options)
    cwd, sandbox, task_uuid = value(unpack_as(raw, Result))
    assert cwd == sandbox == str(tmp_path / task_id)
    assert task_uuid == task_id
    assert "GC_TASK_SANDBOX_DIR" not in os.environ and "GC_TASK_UUID" not in os.environ


def test_task_env_changes_are_undone(options: WorkerOptions) -> None:
    before = dict(os.environ)
    assert value(run(options, pollutes_env)) == "done"
    assert dict(os.environ) == before


def test_concurrent_thread_tasks_restore_the_process_cwd(tmp_path: Path) -> None:
    home = os.getcwd()
    options = WorkerOptions(EPID, str(tmp_path), run_in_sandbox=True)
    results: list[Result] = []

    def one() -> None:
        results.append(run(options, sleeps, 0.05))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [value(r) for r in results] == ["woke"] * 8
    assert os.getcwd() == home
    assert "GC_TASK_UUID" not in os.environ


# ---- timeouts -----------------------------------------------------------------------------


#: Far longer than any test runs: a task the timeout did not interrupt fails its test by a
#: deadline (a join, a result wait, the per-test timeout), never by a clock reading.
UNFINISHABLE_S = 3600.0


def _assert_timed_out(result: Result, limit: str) -> None:
    assert result.error_details is not None, result.data
    assert result.error_details["code"] == "TaskTimeout"
    assert f"GC_TASK_TIMEOUT of {limit} seconds" in result.data
    assert f"{limit} seconds" in result.error_details["user_message"]
    assert "execute.py" not in result.data


def _in_child(run_dir: str, seconds: float) -> bytes:
    # Runs in a worker process's main thread, where SIGALRM is available.
    options = WorkerOptions(EPID, run_dir)
    return execute_task(str(uuid.uuid4()), task_bytes(sleeps, seconds), [], options)


def test_timeout_interrupts_blocking_sleep_in_a_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GC_TASK_TIMEOUT", "0.5")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        raw = pool.submit(_in_child, str(tmp_path), UNFINISHABLE_S).result(timeout=60)
    _assert_timed_out(unpack_as(raw, Result), "0.5")


@pytest.mark.parametrize("fn", [spins, swallows_everything])
def test_timeout_in_a_thread(
    options: WorkerOptions, monkeypatch: pytest.MonkeyPatch, fn: Any
) -> None:
    monkeypatch.setenv("GC_TASK_TIMEOUT", "0.3")
    out: list[Result] = []
    worker = threading.Thread(target=lambda: out.append(run(options, fn, UNFINISHABLE_S)))
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the timeout did not interrupt the task"
    _assert_timed_out(out[0], "0.3")


# Uninterrupted, the task would run an hour: this test's own timeout is its deadline.
@pytest.mark.timeout(60)
def test_timeout_in_the_main_thread_without_alarm(
    options: WorkerOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytest-timeout may own SIGALRM here; the worker then falls back to the async exception.
    monkeypatch.setenv("GC_TASK_TIMEOUT", "0.3")
    _assert_timed_out(run(options, spins, UNFINISHABLE_S), "0.3")


def test_fast_task_under_a_timeout_leaves_nothing_behind(
    options: WorkerOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GC_TASK_TIMEOUT", "0.2")
    for _ in range(20):
        assert value(run(options, add, 1)) == 3
    spins(0.4)  # a stray timer firing now would raise TaskTimedOut here


def test_bad_timeout_value(options: WorkerOptions, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GC_TASK_TIMEOUT", "soon")
    result = run(options, add, 1)
    assert result.error_details is not None
    assert result.error_details["code"] == "CouldNotExecuteUserTaskError"
    assert "GC_TASK_TIMEOUT='soon'" in result.data


def test_zero_timeout_means_none(options: WorkerOptions, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GC_TASK_TIMEOUT", "0")
    assert value(run(options, sleeps, 0.01)) == "woke"
