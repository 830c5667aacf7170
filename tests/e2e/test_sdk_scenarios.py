"""What a user of the official SDK 4.19 does beyond the basics, on each of our engines.

Issue 15's scenarios: each test is a script a user could write (Executor futures, failures of
every kind, code and data shapes, serializers, task groups, the Client's batch and lookup
calls), run by the official SDK against our web service and our endpoint with the thread,
process and GlobusComputeEngine (HTEX on a LocalProvider block) engines. Covered elsewhere and
not repeated here: plain args/kwargs, a remote ValueError, 1,000 tasks in one batch, a 5 MB
argument, JSONData results (test_sdk_to_our_endpoint.py), ShellFunction and MPIFunction
(test_sdk_function_types.py), the submission size limit (test_sdk_submission_limit.py).

To stay cheap, one SDK session (tests/e2e/sdk_session.py) serves every script and one endpoint
per engine serves all of its scenarios; tasks that must stay busy wait on a gate file instead
of sleeping.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from devstack.stack import Stack

ENGINES = {
    "thread": "engine:\n  type: ThreadPoolEngine\n  max_workers: 2\n",
    "process": "engine:\n  type: ProcessPoolEngine\n  max_workers: 2\n",
    # Parsl's watchdog looks for dead workers every heartbeat_period (30 s by default).
    "htex": (
        "engine:\n  type: GlobusComputeEngine\n  max_workers_per_node: 2\n  heartbeat_period: 2\n"
        "  address: 127.0.0.1\n  provider:\n    type: LocalProvider\n"
        "    init_blocks: 1\n    min_blocks: 0\n    max_blocks: 1\n"
    ),
}

#: SDK_SCENARIOS_OFFICIAL=1 also runs every scenario on the official endpoint 4.19 (a core
#: endpoint whose user endpoint runs the same engine): a comparison for the notes, not for CI.
KINDS = sorted(ENGINES) + (
    [f"official-{e}" for e in sorted(ENGINES)]
    if os.environ.get("SDK_SCENARIOS_OFFICIAL") == "1"
    else []
)

#: What every script starts with; a user's script would import the same.
PRELUDE = """\
import concurrent.futures
import json
import os
import time
from globus_compute_sdk import Client, Executor
from globus_compute_sdk.errors import TaskExecutionFailed
EP = {ep!r}
SCRATCH = {scratch!r}
WAIT = {wait!r}  # seconds for one result
"""

#: How long a script waits for one result, and for its whole run. SDK_SCENARIOS_WAIT shortens
#: the comparison with the official endpoint, which loses some tasks for good.
RESULT_WAIT = float(os.environ.get("SDK_SCENARIOS_WAIT", "120"))
SCRIPT_TIMEOUT = 1.5 * RESULT_WAIT + 30


class SdkSession:
    """One official-SDK interpreter that runs scenario scripts (see sdk_session.py)."""

    def __init__(self, stack: Stack, peer_python: Path, workdir: Path) -> None:
        self._argv = [str(peer_python), str(Path(__file__).with_name("sdk_session.py"))]
        self._env = stack.client_env(stack.root / "sdk-user")
        self._stack = stack
        self._workdir = workdir
        self._log = workdir / "sdk-session.log"
        self._count = itertools.count()
        self._proc: subprocess.Popen[str] | None = None

    def run(self, endpoint: str, name: str, body: str, timeout: float = SCRIPT_TIMEOUT) -> Any:
        """Run one scenario script; the value it left in `out`."""
        scratch = self._workdir / f"{name}-{next(self._count)}"
        scratch.mkdir()
        script = scratch / "scenario.py"
        script.write_text(
            PRELUDE.format(ep=endpoint, scratch=str(scratch), wait=RESULT_WAIT)
            + textwrap.dedent(body)
        )
        proc = self._started()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"script": str(script)}) + "\n")
        proc.stdin.flush()
        try:
            reply = self._read_reply(proc.stdout, timeout)
        finally:
            (scratch / "gate").touch()  # a task still held would hold the endpoint's stop
        if "error" in reply:
            raise AssertionError(f"scenario {name} failed:\n{reply['error']}")
        return reply["out"]

    def _started(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is not None:
            self.close()  # it died (a scenario ended it): reap it, start another
        if self._proc is None:
            with open(self._log, "a") as log:
                self._proc = subprocess.Popen(
                    self._argv,
                    env=self._env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
        return self._proc

    def _read_reply(self, stdout: IO[str], timeout: float) -> Any:
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if ready else ""
        if not line:
            self.close()  # a hung scenario must not hold the next one
            raise AssertionError(
                f"no answer from the SDK session in {timeout}s\n"
                f"--- SDK log ---\n{self._log.read_text(errors='replace')[-3000:]}\n"
                f"--- service log ---\n{self._stack.log_text('webservice')[-2000:]}"
            )
        return json.loads(line)

    def close(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(30)
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        self._proc = None


@pytest.fixture(scope="module")
def sdk(
    stack: Stack, peer_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SdkSession]:
    session = SdkSession(stack, peer_python, tmp_path_factory.mktemp("scenarios"))
    yield session
    session.close()


@pytest.fixture(scope="module", params=KINDS)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _official(engine: str) -> bool:
    return engine.startswith("official-")


@pytest.fixture(scope="module")
def endpoint(engine: str, stack: Stack, peer_python: Path) -> Iterator[str]:
    name = f"scen-{engine}"
    if _official(engine):
        template = ENGINES[engine.removeprefix("official-")] + "idle_heartbeats_soft: 0\n"
        yield stack.start_official_endpoint(peer_python.parent, name, template)
        stack.stop_official_endpoint(name)
        return
    stack.configure_endpoint(name, f"display_name: {name}\nheartbeat_period: 5\n{ENGINES[engine]}")
    yield stack.start_endpoint(name)
    stack.stop_endpoint(name)


class Run:
    """Binds a session to the endpoint under test: `run(name, body)`."""

    def __init__(self, sdk: SdkSession, endpoint: str, engine: str) -> None:
        self.sdk, self.endpoint, self.engine = sdk, endpoint, engine
        self.name = f"scen-{engine}"
        self.official = _official(engine)

    def __call__(self, name: str, body: str, timeout: float = SCRIPT_TIMEOUT) -> Any:
        return self.sdk.run(self.endpoint, f"{self.engine}-{name}", body, timeout)


@pytest.fixture
def run(sdk: SdkSession, endpoint: str, engine: str) -> Run:
    return Run(sdk, endpoint, engine)


# ---- the Executor and its futures ----------------------------------------------------------


def test_a_submit_loop_of_many_small_tasks(run: Run) -> None:
    out = run(
        "many-small",
        """
        def cube(x):
            return x ** 3
        with Executor(endpoint_id=EP) as ex:
            futures = {ex.submit(cube, i): i for i in range(150)}
            got = {}
            for fut in concurrent.futures.as_completed(futures, timeout=WAIT):
                got[futures[fut]] = fut.result()
            ids = {fut.task_id for fut in futures}
        out = {"ok": got == {i: i ** 3 for i in range(150)}, "ids": len(ids)}
        """,
    )
    assert out == {"ok": True, "ids": 150}


def test_result_with_a_timeout_then_the_result(run: Run) -> None:
    out = run(
        "result-timeout",
        """
        def held(gate):
            import os, time
            while not os.path.exists(gate):
                time.sleep(0.05)
            return "released"
        gate = os.path.join(SCRATCH, "gate")
        with Executor(endpoint_id=EP) as ex:
            fut = ex.submit(held, gate)
            try:
                fut.result(timeout=1)
                early = "returned"
            except concurrent.futures.TimeoutError:
                early = "TimeoutError"
            waiting = fut.done()
            open(gate, "w").close()
            out = [early, waiting, fut.result(timeout=WAIT)]
        """,
    )
    assert out == ["TimeoutError", False, "released"]


def test_done_callbacks_and_wait(run: Run) -> None:
    out = run(
        "callbacks",
        """
        import threading
        seen, lock = [], threading.Lock()
        def record(fut):
            with lock:
                seen.append(fut.result())
        def echo(x):
            return x
        with Executor(endpoint_id=EP) as ex:
            futures = [ex.submit(echo, i) for i in range(10)]
            for fut in futures:
                fut.add_done_callback(record)
            done, not_done = concurrent.futures.wait(futures, timeout=WAIT)
        deadline = time.monotonic() + 30
        while len(seen) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        out = {"done": len(done), "not_done": len(not_done), "seen": sorted(seen)}
        """,
    )
    assert out == {"done": 10, "not_done": 0, "seen": list(range(10))}


def test_the_first_free_worker_takes_queued_work(run: Run) -> None:
    """Two workers, one held busy: every quick task finishes on the other, before the release."""
    out = run(
        "first-free-worker",
        """
        def held(gate):
            import os, time
            while not os.path.exists(gate):
                time.sleep(0.05)
            return "long"
        def quick(i):
            return i
        gate = os.path.join(SCRATCH, "gate")
        with Executor(endpoint_id=EP) as ex:
            long_task = ex.submit(held, gate)
            quick = [ex.submit(quick, i) for i in range(12)]
            quick_results = [f.result(timeout=WAIT) for f in quick]
            still_held = not long_task.done()
            open(gate, "w").close()
            out = [quick_results, still_held, long_task.result(timeout=WAIT)]
        """,
    )
    assert out == [list(range(12)), True, "long"]


def test_tasks_in_flight_at_shutdown_still_complete(run: Run) -> None:
    """shutdown() returns while the SDK may still be sending; what was sent completes, and
    with cancel_futures a future is either cancelled before sending or completes."""
    out = run(
        "shutdown",
        """
        def nap(x):
            import time
            time.sleep(0.2)
            return x
        ex = Executor(endpoint_id=EP)
        waited = [ex.submit(nap, i) for i in range(4)]
        ex.shutdown(wait=True)
        ex2 = Executor(endpoint_id=EP)
        maybe = [ex2.submit(nap, i) for i in range(20)]
        ex2.shutdown(wait=False, cancel_futures=True)
        settled = [f.cancelled() or f.result(timeout=WAIT) == i for i, f in enumerate(maybe)]
        out = {"values": [f.result(timeout=WAIT) for f in waited], "settled": all(settled)}
        """,
    )
    assert out == {"values": [0, 1, 2, 3], "settled": True}


def test_a_task_group_shared_by_two_executors_and_reloaded(run: Run) -> None:
    """Two executors on one task group; a batch adds a task that is still running; then an
    executor reattaches with reload_tasks(): finished tasks come from the service, the
    running one through the result watcher once it ends."""
    out = run(
        "task-group",
        """
        import uuid
        def tag(x):
            return f"t{x}"
        def held(gate):
            import os, time
            while not os.path.exists(gate):
                time.sleep(0.05)
            return "late"
        gate = os.path.join(SCRATCH, "gate")
        group = str(uuid.uuid4())
        with Executor(endpoint_id=EP, task_group_id=group) as ex1:
            first = [ex1.submit(tag, i).result(timeout=WAIT) for i in range(3)]
        with Executor(endpoint_id=EP, task_group_id=group) as ex2:
            second = ex2.submit(tag, 3).result(timeout=WAIT)
        client = Client()
        batch = client.create_batch(task_group_id=group)
        held_fid = client.register_function(held)
        batch.add(held_fid, args=(gate,))
        held_id = client.batch_run(EP, batch)["tasks"][held_fid][0]
        with Executor(endpoint_id=EP) as ex3:
            reloaded = {f.task_id: f for f in ex3.reload_tasks(group)}
            late_was_done = reloaded[held_id].done()
            open(gate, "w").close()
            values = sorted(f.result(timeout=WAIT) for f in reloaded.values())
            same_group = str(ex3.task_group_id) == group
        out = {"first": first, "second": second, "values": values,
               "late_was_done": late_was_done, "same_group": same_group}
        """,
    )
    assert out == {
        "first": ["t0", "t1", "t2"],
        "second": "t3",
        "values": ["late", "t0", "t1", "t2", "t3"],
        "late_was_done": False,
        "same_group": True,
    }


def test_register_then_submit_by_function_id(run: Run) -> None:
    out = run(
        "registered",
        """
        def greet(name, punctuation="!"):
            return f"hello {name}{punctuation}"
        with Executor(endpoint_id=EP) as ex:
            fid = ex.register_function(greet)
            a = ex.submit_to_registered_function(fid, ("ada",)).result(timeout=WAIT)
            b = ex.submit_to_registered_function(fid, ("bob",), {"punctuation": "?"})
            out = [a, b.result(timeout=WAIT)]
        """,
    )
    assert out == ["hello ada!", "hello bob?"]


def test_a_user_endpoint_config_sent_to_a_single_user_endpoint(run: Run) -> None:
    """Options meant for a core endpoint: the task still runs (the service logs that this
    endpoint ignores them), as with the official service."""
    out = run(
        "uec-single-user",
        """
        def one():
            return 1
        with Executor(endpoint_id=EP, user_endpoint_config={"worker_init": "true"}) as ex:
            out = ex.submit(one).result(timeout=WAIT)
        """,
    )
    assert out == 1


def test_a_resource_specification_the_engine_cannot_honour(run: Run) -> None:
    """`num_nodes` needs an MPI engine: the task fails with an error that says so (the
    official engines refuse it too), and a task without one still runs."""
    out = run(
        "resource-spec",
        """
        def one():
            return 1
        with Executor(endpoint_id=EP, resource_specification={"num_nodes": 2}) as ex:
            try:
                out = {"result": ex.submit(one).result(timeout=WAIT)}
            except TaskExecutionFailed as e:
                out = {"failed": str(e)}
        with Executor(endpoint_id=EP) as ex:
            out["next"] = ex.submit(one).result(timeout=WAIT)
        """,
    )
    assert "resource" in out.get("failed", "").lower(), out
    assert "num_nodes" in out["failed"], out
    assert out["next"] == 1


def test_several_executors_submitting_from_threads(run: Run) -> None:
    out = run(
        "threads-of-executors",
        """
        import threading
        def label(who, i):
            return f"{who}:{i}"
        results, lock = {}, threading.Lock()
        def user(who):
            with Executor(endpoint_id=EP) as ex:
                futures = [ex.submit(label, who, i) for i in range(15)]
                got = [f.result(timeout=WAIT) for f in futures]
            with lock:
                results[who] = got
        threads = [threading.Thread(target=user, args=(f"u{n}",)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        out = {w: r == [f"{w}:{i}" for i in range(15)] for w, r in sorted(results.items())}
        """,
    )
    assert out == {"u0": True, "u1": True, "u2": True, "u3": True}


def test_tasks_submitted_while_the_endpoint_is_offline_run_when_it_returns(
    run: Run, stack: Stack
) -> None:
    if run.official:
        pytest.skip("restarting the official endpoint is not part of this comparison")
    name = run.name
    stack.stop_endpoint(name)
    submitted = run(
        "offline-submit",
        """
        def double(x):
            return 2 * x
        client = Client()
        fid = client.register_function(double)
        batch = client.create_batch()
        for i in range(5):
            batch.add(fid, args=(i,))
        out = client.batch_run(EP, batch)["tasks"][fid]
        """,
    )
    assert stack.start_endpoint(name) == run.endpoint
    out = run(
        "offline-results",
        f"""
        client = Client()
        ids = {submitted!r}
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            status = client.get_batch_result(ids)
            if len(status) == len(ids) and not any(s["pending"] for s in status.values()):
                break
            time.sleep(0.2)
        out = [status[t].get("result") for t in ids]
        """,
    )
    assert out == [0, 2, 4, 6, 8]


# ---- failures ---------------------------------------------------------------------------------

#: Runs the scenario's `task` (with `ARGS` when it defines them), then a plain task: the first
#: one's outcome and whether the endpoint still runs work after it.
FAILURE_THEN_NEXT = """
def after():
    return "next"
with Executor(endpoint_id=EP) as ex:
    fut = ex.submit(task, *globals().get("ARGS", ()))
    try:
        out = {"result": repr(fut.result(timeout=WAIT))}
    except TaskExecutionFailed as e:
        out = {"failed": str(e)}
    except Exception as e:
        out = {"other": f"{type(e).__name__}: {e}"}
    out["next"] = ex.submit(after).result(timeout=WAIT)
"""


def _failure(run: Run, name: str, task: str) -> Any:
    out = run(name, textwrap.dedent(task) + FAILURE_THEN_NEXT)
    print(f"{name}: {out}")  # the texts a user reads, in the test report
    return out


def test_a_custom_exception_class_with_its_remote_traceback(run: Run) -> None:
    out = _failure(
        run,
        "custom-exception",
        """
        def task():
            # Helpers live inside the function: only the function itself is shipped.
            class QuotaExceeded(Exception):
                pass
            def check(used):
                if used > 10:
                    raise QuotaExceeded(f"used {used} of 10")
            check(11)
        """,
    )
    assert "QuotaExceeded: used 11 of 10" in out["failed"], out
    assert "in check" in out["failed"] and "in task" in out["failed"], out
    assert out["next"] == "next"


def test_a_chained_exception_shows_both_causes(run: Run) -> None:
    out = _failure(
        run,
        "chained-exception",
        """
        def task():
            try:
                {}["missing"]
            except KeyError as e:
                raise RuntimeError("lookup failed") from e
        """,
    )
    text = out["failed"]
    assert "KeyError: 'missing'" in text and "RuntimeError: lookup failed" in text, out
    assert "direct cause" in text, out
    assert out["next"] == "next"


def test_an_exception_that_cannot_be_pickled(run: Run) -> None:
    """An exception holding a lock, and one whose constructor cannot be replayed by pickle:
    both still come back as the remote error text."""
    out = _failure(
        run,
        "unpicklable-exception",
        """
        def task():
            import threading
            class Locked(Exception):
                def __init__(self, msg):
                    super().__init__(msg)
                    self.lock = threading.Lock()
            class TwoArgs(Exception):
                def __init__(self, code, detail):
                    super().__init__(f"{code}: {detail}")
            try:
                raise TwoArgs(7, "inner")
            except TwoArgs:
                raise Locked("holding a lock")
        """,
    )
    text = out["failed"]
    assert "Locked: holding a lock" in text and "TwoArgs: 7: inner" in text, out
    assert out["next"] == "next"


def test_a_result_that_cannot_be_serialized_is_a_clear_error(run: Run) -> None:
    out = _failure(
        run,
        "unpicklable-result",
        """
        def task():
            return (i for i in range(3))
        """,
    )
    assert "failed" in out, out
    assert "generator" in out["failed"], out
    assert out["next"] == "next"


def test_sys_exit_in_a_task_is_reported(run: Run) -> None:
    """The official endpoint loses such a task (issue 15); ours reports it, and goes on."""
    out = _failure(
        run,
        "sys-exit",
        """
        def task():
            import sys
            sys.exit(3)
        """,
    )
    assert "SystemExit" in out.get("failed", ""), out
    assert "3" in out["failed"], out
    assert out["next"] == "next"


def test_a_worker_that_dies_fails_its_task_and_the_next_task_runs(run: Run) -> None:
    """os._exit() ends the worker process: the task fails with a clear error and the pool
    recovers (the official ProcessPoolEngine's pool breaks for good). Under threads os._exit
    ends the endpoint itself, as with the official ThreadPoolEngine: not a scenario there."""
    if run.engine.endswith("thread"):
        pytest.skip("os._exit in a thread ends the endpoint process (any engine of threads)")
    out = _failure(
        run,
        "worker-death",
        """
        def task():
            import os
            os._exit(9)
        """,
    )
    assert "failed" in out, out
    assert out["next"] == "next"


def test_a_result_over_the_size_limit_is_refused_with_a_clear_error(run: Run) -> None:
    out = _failure(
        run,
        "result-too-large",
        """
        def task():
            return b"r" * 9_000_000
        """,
    )
    assert "failed" in out, out
    assert "10485760" in out["failed"] or "too large" in out["failed"].lower(), out
    assert out["next"] == "next"


def test_other_base_exceptions_raised_by_a_task_are_reported(run: Run) -> None:
    out = _failure(
        run,
        "keyboard-interrupt",
        """
        def task():
            raise KeyboardInterrupt("stop from the task")
        """,
    )
    assert "KeyboardInterrupt" in out.get("failed", ""), out
    assert out["next"] == "next"


def test_unicode_names_and_messages(run: Run) -> None:
    out = _failure(
        run,
        "unicode-names",
        """
        def café(naïve):
            raise ValueError(f"échec ☃ {naïve} 東京")
        task = café
        ARGS = ("ü",)
        """,
    )
    assert "ValueError: échec ☃ ü 東京" in out.get("failed", ""), out
    assert "in café" in out["failed"], out
    assert out["next"] == "next"


# ---- code and data shapes -------------------------------------------------------------------


def test_keyword_only_defaults_and_annotations(run: Run) -> None:
    out = run(
        "kwargs-only",
        """
        def window(values: list[int], *, start: int = 0, stop: int | None = None) -> list[int]:
            return values[start:stop]
        with Executor(endpoint_id=EP) as ex:
            a = ex.submit(window, [1, 2, 3, 4], start=1).result(timeout=WAIT)
            b = ex.submit(window, [1, 2, 3, 4], stop=2).result(timeout=WAIT)
            try:
                ex.submit(window, [1], 2).result(timeout=WAIT)
                c = "ran"
            except TaskExecutionFailed as e:
                c = "positional refused" if "TypeError" in str(e) else str(e)
        out = [a, b, c]
        """,
    )
    assert out == [[2, 3, 4], [1, 2], "positional refused"]


def test_closures_and_lambdas(run: Run) -> None:
    out = run(
        "closures",
        """
        def make_scaler(factor):
            offset = factor * 10
            def scale(x):
                return x * factor + offset
            return scale
        with Executor(endpoint_id=EP) as ex:
            a = ex.submit(make_scaler(3), 2).result(timeout=WAIT)
            b = ex.submit(lambda s: s.upper(), "lambda").result(timeout=WAIT)
        out = [a, b]
        """,
    )
    assert out == [36, "LAMBDA"]


def test_nested_functions_imports_inside_and_recursion(run: Run) -> None:
    out = run(
        "nested",
        """
        def analyse(text):
            import collections, re, statistics
            def fib(n):
                return n if n < 2 else fib(n - 1) + fib(n - 2)
            words = re.findall(r"[a-z]+", text.lower())
            lengths = [len(w) for w in words]
            return {"top": collections.Counter(words).most_common(1)[0],
                    "mean": statistics.mean(lengths), "fib": fib(15)}
        with Executor(endpoint_id=EP) as ex:
            out = ex.submit(analyse, "the cat and the hat").result(timeout=WAIT)
        """,
    )
    assert out == {"top": ["the", 2], "mean": 3, "fib": 610}


def test_functions_returning_none_and_with_no_arguments(run: Run) -> None:
    out = run(
        "none",
        """
        def nothing():
            pass
        def echo(x=None):
            return x
        with Executor(endpoint_id=EP) as ex:
            out = [ex.submit(nothing).result(timeout=WAIT), ex.submit(echo).result(timeout=WAIT),
                   ex.submit(echo, None).result(timeout=WAIT)]
        """,
    )
    assert out == [None, None, None]


def test_unicode_and_bytes_round_trip(run: Run) -> None:
    out = run(
        "unicode-bytes",
        """
        def mirror(text, blob):
            return text[::-1], bytes(reversed(blob)), len(text.encode("utf-8"))
        text = "naïve café — 東京 🚀 \\u0000 end"
        blob = bytes(range(256))
        with Executor(endpoint_id=EP) as ex:
            back, rblob, nbytes = ex.submit(mirror, text, blob).result(timeout=WAIT)
        out = [back == text[::-1], rblob == blob[::-1], nbytes == len(text.encode())]
        """,
    )
    assert out == [True, True, True]


def test_standard_library_data_types_round_trip(run: Run) -> None:
    out = run(
        "stdlib-types",
        """
        import collections, dataclasses, datetime, decimal, fractions, http, uuid
        @dataclasses.dataclass
        class Point:
            x: int
            y: int
        Pair = collections.namedtuple("Pair", "a b")
        values = {
            "set": {1, 2, 3}, "frozenset": frozenset("ab"), "tuple": (1, (2, 3)),
            "datetime": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
            "date": datetime.date(2026, 1, 2), "delta": datetime.timedelta(seconds=90),
            "decimal": decimal.Decimal("1.10"), "fraction": fractions.Fraction(1, 3),
            "complex": 1 + 2j, "uuid": uuid.UUID(int=7), "ordered": collections.OrderedDict(b=1),
            "bigint": 2 ** 200, "float": float("inf"), "point": Point(1, 2),
            "enum": http.HTTPStatus.OK, "pair": Pair(1, "b"), "nested": {(1, 2): [None, True]},
        }
        def identity(v):
            return v
        with Executor(endpoint_id=EP) as ex:
            back = ex.submit(identity, values).result(timeout=WAIT)
        def same(a, b):  # a class shipped by value is a copy: compare its fields
            return a == b or dataclasses.astuple(a) == dataclasses.astuple(b)
        out = {k: same(back[k], v) for k, v in values.items()}
        """,
    )
    assert out == dict.fromkeys(out, True) and len(out) == 17, out


def test_a_large_result_just_under_the_limit(run: Run) -> None:
    out = run(
        "large-result",
        """
        import hashlib
        def make(n):
            return bytes(range(256)) * (n // 256)
        n = 7 * 1024 * 1024
        with Executor(endpoint_id=EP) as ex:
            blob = ex.submit(make, n).result(timeout=WAIT)
        expected = bytes(range(256)) * (n // 256)
        out = [len(blob), hashlib.sha256(blob).digest() == hashlib.sha256(expected).digest()]
        """,
    )
    assert out == [7 * 1024 * 1024, True]


def test_every_code_and_data_serialization_strategy(run: Run) -> None:
    """Each code strategy of the SDK with each data strategy, set through
    Executor(serializer=ComputeSerializer(...)), and results in each data strategy."""
    out = run(
        "serializers",
        """
        from globus_compute_sdk.serialize import (
            AllCodeStrategies, AllDataStrategies, ComputeSerializer, DillCode,
            DillCodeSource, DillCodeTextInspect, DillDataBase64, JSONData,
            PureSourceDill, PureSourceTextInspect,
        )
        def scale(values, factor=2):
            \"\"\"Multiply each value.\"\"\"
            return [v * factor for v in values]
        codes = [DillCode, DillCodeSource, DillCodeTextInspect, PureSourceDill,
                 PureSourceTextInspect, AllCodeStrategies]
        datas = [DillDataBase64, JSONData, AllDataStrategies]
        executors, futures = [], {}
        for code in codes:
            for data in datas:
                ser = ComputeSerializer(strategy_code=code(), strategy_data=data())
                ex = Executor(endpoint_id=EP, serializer=ser, result_serializers=[data()])
                executors.append(ex)
                futures[f"{code.__name__}/{data.__name__}"] = ex.submit(scale, [1, 2], factor=3)
        out = {}
        for key, fut in futures.items():
            try:
                out[key] = fut.result(timeout=WAIT)
            except Exception as e:
                out[key] = f"{type(e).__name__}: {e}"
        for ex in executors:
            ex.shutdown()
        """,
    )
    assert out == {key: [3, 6] for key in out} and len(out) == 18, out


def test_a_user_class_instance_as_argument_and_result(run: Run) -> None:
    out = run(
        "user-class",
        """
        class Account:
            def __init__(self, owner, balance):
                self.owner, self.balance = owner, balance
            def deposit(self, amount):
                # type(self), not the global name: the worker has only what was shipped
                return type(self)(self.owner, self.balance + amount)
        def pay(account, amount):
            return account.deposit(amount)
        with Executor(endpoint_id=EP) as ex:
            back = ex.submit(pay, Account("ada", 10), 5).result(timeout=WAIT)
        out = [type(back).__name__, back.owner, back.balance]
        """,
    )
    assert out == ["Account", "ada", 15]


def test_a_library_function_submitted_directly(run: Run) -> None:
    out = run(
        "library-function",
        """
        import math, operator
        with Executor(endpoint_id=EP) as ex:
            out = [ex.submit(math.factorial, 10).result(timeout=WAIT),
                   ex.submit(operator.mul, 6, 7).result(timeout=WAIT),
                   ex.submit(sorted, [3, 1, 2], reverse=True).result(timeout=WAIT)]
        """,
    )
    assert out == [3628800, 42, [3, 2, 1]]


def test_functions_as_arguments_and_decorated_functions(run: Run) -> None:
    out = run(
        "higher-order",
        """
        import functools
        def traced(fn):
            @functools.wraps(fn)
            def wrapper(*a, **k):
                return ["traced", fn(*a, **k)]
            return wrapper
        @traced
        def add(a, b):
            return a + b
        def apply(fn, values):
            return [fn(v) for v in values]
        with Executor(endpoint_id=EP, batch_size=1) as ex:
            out = [ex.submit(add, 2, 3).result(timeout=WAIT),
                   ex.submit(apply, lambda v: v * v, [1, 2, 3]).result(timeout=WAIT)]
        """,
    )
    assert out == [["traced", 5], [1, 4, 9]]


# ---- what a task sees and does ----------------------------------------------------------------


def test_a_task_that_prints_and_logs_a_lot(run: Run) -> None:
    """Output to stdout, stderr and the logging module must not disturb the result path."""
    out = run(
        "noisy",
        """
        def noisy(n):
            import logging, sys
            for i in range(n):
                print(f"out {i} " + "x" * 200)
                print(f"err {i}", file=sys.stderr)
            logging.getLogger("user").warning("a user warning")
            sys.stdout.flush()
            return "quiet result"
        with Executor(endpoint_id=EP) as ex:
            out = [ex.submit(noisy, 2000).result(timeout=WAIT) for _ in range(2)]
        """,
    )
    assert out == ["quiet result"] * 2


def test_subprocesses_threads_and_a_process_pool_inside_a_task(run: Run) -> None:
    out = run(
        "children",
        """
        def fan_out():
            import concurrent.futures, math, subprocess, threading
            echoed = subprocess.run(["echo", "child"], capture_output=True, text=True).stdout
            box = []
            t = threading.Thread(target=lambda: box.append("thread"))
            t.start()
            t.join()
            with concurrent.futures.ProcessPoolExecutor(2) as pool:
                factorials = list(pool.map(math.factorial, range(6)))
            return [echoed.strip(), box, factorials]
        with Executor(endpoint_id=EP) as ex:
            out = ex.submit(fan_out).result(timeout=WAIT)
        """,
    )
    assert out == ["child", ["thread"], [1, 1, 2, 6, 24, 120]]


def test_the_task_environment(run: Run) -> None:
    """GC_TASK_UUID names the task (as the official workers set it), the working directory
    is writable, and the worker has the endpoint's name in its environment."""
    out = run(
        "environment",
        """
        def where():
            import os, tempfile
            with open("probe.txt", "w") as f:
                f.write("ok")
            os.remove("probe.txt")
            with tempfile.NamedTemporaryFile() as t:
                t.write(b"x")
            return {"task": os.environ.get("GC_TASK_UUID"),
                    "name": os.environ.get("GLOBUS_COMPUTE_ENDPOINT_NAME")}
        with Executor(endpoint_id=EP) as ex:
            # One at a time: under threads the environment is the whole process's.
            futs, seen = [], []
            for _ in range(3):
                futs.append(ex.submit(where))
                seen.append(futs[-1].result(timeout=WAIT))
            out = {"ids": [s["task"] == f.task_id for s, f in zip(seen, futs)],
                   "names": sorted({s["name"] for s in seen})}
        """,
    )
    assert out["ids"] == [True, True, True], out
    assert len(out["names"]) == 1 and out["names"][0].startswith("scen-"), out


def test_worker_hardware_details(run: Run) -> None:
    out = run(
        "hardware",
        """
        client = Client()
        with Executor(endpoint_id=EP) as ex:
            via_executor = ex.get_worker_hardware_details()
        task_id = client.get_worker_hardware_details(EP)
        deadline = time.monotonic() + WAIT
        while True:
            task = client.get_task(task_id)
            if not task["pending"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        via_client = client.get_result(task_id)
        out = [via_executor, via_client]
        """,
    )
    assert out[0].startswith("== Compute Endpoint worker =="), out
    for report in out:
        assert "python_runtime_host_info" in report and "cpu" in report.lower(), out


def test_a_task_that_reads_stdin_and_writes_to_the_raw_descriptors(run: Run) -> None:
    """A worker's standard descriptors are not a channel of ours: reading stdin ends at once,
    and bytes written straight to fd 1 and 2 do not reach the results."""
    out = run(
        "raw-fds",
        """
        def rude():
            import os, sys
            try:
                got = sys.stdin.read()
            except (OSError, ValueError, AttributeError) as e:
                got = type(e).__name__
            os.write(1, b"\\x00garbage on fd 1\\n" * 100)
            os.write(2, b"garbage on fd 2\\n")
            return ["stdin", got]
        with Executor(endpoint_id=EP) as ex:
            out = [ex.submit(rude).result(timeout=WAIT) for _ in range(2)]
        """,
    )
    assert len(out) == 2, out
    for label, got in out:
        assert label == "stdin" and got in ("", "ValueError", "OSError", "AttributeError"), out


# ---- the Client -------------------------------------------------------------------------------


def test_a_batch_of_two_functions_and_the_lookup_calls(run: Run) -> None:
    out = run(
        "client-batch",
        """
        from globus_compute_sdk.errors import TaskPending
        def add(a, b=0):
            return a + b
        def fail(msg):
            raise ValueError(msg)
        client = Client()
        add_id = client.register_function(add)
        fail_id = client.register_function(fail)
        batch = client.create_batch()
        for i in range(5):
            batch.add(add_id, args=(i,), kwargs={"b": 100})
        batch.add(fail_id, args=("bad input",))
        resp = client.batch_run(EP, batch)
        add_ids, fail_ids = resp["tasks"][add_id], resp["tasks"][fail_id]
        single = client.run(1, 2, endpoint_id=EP, function_id=add_id)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            status = client.get_batch_result(add_ids + [single])
            if len(status) == 6 and not any(s["pending"] for s in status.values()):
                break
            time.sleep(0.2)
        while time.monotonic() < deadline:
            try:
                if not client.get_task(fail_ids[0])["pending"]:
                    failed = "no error"
                    break
            except Exception as e:
                failed = type(e).__name__ + ("/bad input" if "bad input" in str(e) else "")
                break
            time.sleep(0.2)
        out = {
            "adds": [status[t]["result"] for t in add_ids],
            "single": client.get_result(single),
            "task": {k: client.get_task(single)[k] for k in ("pending", "status", "result")},
            "failed": failed,
            "group": bool(resp["task_group_id"]), "endpoint": resp["endpoint_id"] == EP,
            "function": client.get_function(add_id)["function_name"],
        }
        """,
    )
    assert out == {
        "adds": [100, 101, 102, 103, 104],
        "single": 3,
        "task": {"pending": False, "status": "success", "result": 3},
        "failed": "TaskExecutionFailed/bad input",
        "group": True,
        "endpoint": True,
        "function": "add",
    }


def test_register_source_code_then_run(run: Run) -> None:
    out = run(
        "source-code",
        """
        source = "def shout(word):\\n    return word.upper() + '!'\\n"
        with Executor(endpoint_id=EP) as ex:
            fid = ex.client.register_source_code(source, "shout")
            out = ex.submit_to_registered_function(fid, ("hey",)).result(timeout=WAIT)
        """,
    )
    assert out == "HEY!"


def test_endpoint_status_metadata_and_listing(run: Run) -> None:
    out = run(
        "endpoint-info",
        """
        client = Client()
        status = client.get_endpoint_status(EP)
        meta = client.get_endpoint_metadata(EP)
        listed = [e["uuid"] for e in client.get_endpoints()]
        from globus_sdk import GlobusAPIError
        import uuid
        unknown = {}
        for what, call in [("status", client.get_endpoint_status),
                           ("task", client.get_task)]:
            try:
                call(str(uuid.uuid4()))
                unknown[what] = "answered"
            except GlobusAPIError as e:
                unknown[what] = e.http_status
        out = {"status": status.get("status"), "meta_uuid": meta.get("uuid"),
               "meta_name": meta.get("name"), "listed": EP in listed, "unknown": unknown}
        """,
    )
    assert out["status"] == "online", out
    assert out["meta_uuid"] == run.endpoint and out["listed"] is True, out
    assert out["meta_name"] == run.name, out
    assert out["unknown"] == {"status": 404, "task": 404}, out


def test_allowed_functions_and_serializers_restrict_what_an_endpoint_runs(
    sdk: SdkSession, stack: Stack
) -> None:
    """An endpoint with `allowed_functions` and an engine's `allowed_serializers` (source
    only), as a site's docs would set them: the listed function, shipped as source, runs; the
    same function shipped by dill is refused by the endpoint with a clear error; a function
    not on the list is refused at submit time with the service's 403, by id or by Executor."""
    ids = sdk.run(
        "",
        "allowed-register",
        """
        from globus_compute_sdk.serialize import ComputeSerializer, PureSourceTextInspect
        def permitted(x):
            return x + 1
        def other(x):
            return x - 1
        as_source = Client()
        as_source.fx_serializer = ComputeSerializer(strategy_code=PureSourceTextInspect())
        client = Client()
        out = [as_source.register_function(permitted), client.register_function(permitted),
               client.register_function(other)]
        """,
    )
    name = "scen-allowed"
    stack.configure_endpoint(
        name,
        f"display_name: {name}\nheartbeat_period: 5\nallowed_functions:\n"
        f"  - {ids[0]}\n  - {ids[1]}\n" + ENGINES["thread"] + "  allowed_serializers:\n"
        "    - globus_compute_sdk.serialize.PureSourceTextInspect\n"
        "    - globus_compute_sdk.serialize.DillDataBase64\n",
    )
    endpoint = stack.start_endpoint(name)
    try:
        out = sdk.run(
            endpoint,
            "allowed-run",
            f"""
            from globus_sdk import GlobusAPIError
            source_id, dill_id, other_id = {ids!r}
            def inline(x):
                return x
            out = {{"allowed": sorted(Client().get_allowed_functions(EP).get("functions"))}}
            with Executor(endpoint_id=EP) as ex:
                out["source"] = ex.submit_to_registered_function(source_id, (1,)).result(
                    timeout=WAIT
                )
                try:
                    ex.submit_to_registered_function(dill_id, (1,)).result(timeout=WAIT)
                    out["dill"] = "ran"
                except TaskExecutionFailed as e:
                    out["dill"] = "DillCode" in str(e) and "allowed" in str(e).lower()
            # A refused submission stops its Executor (the SDK's rule): one each.
            for key, submit in [
                ("by_id", lambda ex: ex.submit_to_registered_function(other_id, (1,))),
                ("inline", lambda ex: ex.submit(inline, 1)),
            ]:
                with Executor(endpoint_id=EP) as ex:
                    try:
                        out[key] = submit(ex).result(timeout=WAIT)
                    except GlobusAPIError as e:
                        out[key] = [e.http_status, "allowed_functions" in str(e)]
            """,
        )
    finally:
        stack.stop_endpoint(name)
    assert out == {
        "allowed": sorted(ids[:2]),
        "source": 2,
        "dill": True,
        "by_id": [403, True],
        "inline": [403, True],
    }
