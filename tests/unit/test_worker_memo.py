"""A worker reuses deserialized payloads only where a task cannot tell (endpoint.worker.memo).

Functions are built as a user's script builds them (globals: ``__main__``), so dill serializes
them by value, as the SDK does, and each test runs them through `execute_task` twice or more.
"""

from __future__ import annotations

import sys
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dill
import pytest

from endpoint.protocol.messages import Result, Task, pack, unpack_as
from endpoint.protocol.serialize import (
    DEFAULT_CODE,
    DEFAULT_DATA,
    deserialize,
    pack_buffers,
    serialize_result,
)
from endpoint.worker import execute
from endpoint.worker.execute import WorkerOptions, execute_task
from endpoint.worker.memo import PayloadMemo

EPID = str(uuid.uuid4())


def script_function(source: str, name: str) -> Callable[..., Any]:
    """A function defined as in a user's script: its globals are ``__main__``'s namespace."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<user script>", "exec"), sys.modules["__main__"].__dict__, namespace)
    fn = namespace[name]
    assert fn.__module__ == "__main__"
    return fn  # type: ignore[no-any-return]


def body(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    buffer = pack_buffers([DEFAULT_CODE.serialize(fn)]) + pack_buffers(
        [DEFAULT_DATA.serialize(args), DEFAULT_DATA.serialize(kwargs)]
    )
    return pack(Task(task_id=str(uuid.uuid4()), task_buffer=buffer))


@pytest.fixture
def options(tmp_path: Path) -> WorkerOptions:
    return WorkerOptions(EPID, str(tmp_path))


@pytest.fixture(autouse=True)
def fresh_memo() -> None:
    execute._MEMO.clear()


def run(options: WorkerOptions, packed: bytes) -> Any:
    task_id = str(uuid.uuid4())
    result = unpack_as(execute_task(task_id, packed, [], options), Result)
    assert result.error_details is None, result.data
    return deserialize(result.data)


def runs(options: WorkerOptions, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """The values of three tasks that carry the same payload (`fn` with these arguments)."""
    packed = body(fn, *args, **kwargs)
    return [run(options, packed) for _ in range(3)]


def test_plain_function_is_deserialized_once(options: WorkerOptions) -> None:
    fn = script_function("def add(a, b=2):\n    return a + b\n", "add")
    packed = body(fn, 40)
    before = execute._MEMO.hits
    assert [run(options, packed) for _ in range(5)] == [42] * 5
    # function, args and kwargs of the last four tasks came from the memo
    assert execute._MEMO.hits - before == 12


def test_mutable_default_starts_fresh_for_every_task(options: WorkerOptions) -> None:
    fn = script_function("def grow(acc=[]):\n    acc.append(1)\n    return len(acc)\n", "grow")
    assert runs(options, fn) == [1, 1, 1]


def test_function_attributes_set_by_a_task_do_not_reach_the_next(options: WorkerOptions) -> None:
    fn = script_function(
        "def count():\n"
        "    import sys\n"
        "    me = sys._getframe().f_code\n"
        "    import gc\n"
        "    f = [o for o in gc.get_referrers(me) if callable(o)][0]\n"
        "    f.calls = getattr(f, 'calls', 0) + 1\n"
        "    return f.calls\n",
        "count",
    )
    assert runs(options, fn) == [1, 1, 1]


def test_closure_state_is_not_shared(options: WorkerOptions) -> None:
    outer = script_function(
        "def outer():\n"
        "    n = 0\n"
        "    def tick():\n"
        "        nonlocal n\n"
        "        n += 1\n"
        "        return n\n"
        "    return tick\n",
        "outer",
    )
    assert runs(options, outer()) == [1, 1, 1]


def test_mutated_arguments_are_rebuilt(options: WorkerOptions) -> None:
    fn = script_function(
        "def take(items, opts):\n"
        "    items.append('x')\n"
        "    opts['seen'] = True\n"
        "    return (len(items), sorted(opts))\n",
        "take",
    )
    assert runs(options, fn, [1, 2], {"a": 1}) == [(3, ["a", "seen"])] * 3
    kw = script_function(
        "def kw(**kwargs):\n    kwargs['b'] = 2\n    return sorted(kwargs)\n", "kw"
    )
    assert runs(options, kw, a=1) == [["a", "b"]] * 3


def test_globals_behave_as_without_the_memo(options: WorkerOptions) -> None:
    # dill's default: a script's function uses the worker's __main__ namespace, which a fresh
    # deserialization shares too, so a global counts across tasks either way.
    fn = script_function(
        "def bump():\n"
        "    global _MEMO_TEST_HITS\n"
        "    _MEMO_TEST_HITS = globals().get('_MEMO_TEST_HITS', 0) + 1\n"
        "    return _MEMO_TEST_HITS\n",
        "bump",
    )
    try:
        assert runs(options, fn) == [1, 2, 3]
    finally:
        sys.modules["__main__"].__dict__.pop("_MEMO_TEST_HITS", None)


def test_function_with_its_own_namespace_is_not_memoized() -> None:
    # dill's recurse setting gives each deserialized function a namespace of its own: sharing
    # the function would share that namespace between tasks.
    fn = script_function("def lone():\n    return 1\n", "lone")
    payload = DEFAULT_CODE.identifier + dill.dumps(fn, recurse=True).hex()
    memo = PayloadMemo()
    made: list[Any] = []

    def own_namespace(_: str) -> Any:
        made.append(types.FunctionType(fn.__code__, {"__name__": "not-a-module"}, fn.__name__))
        return made[-1]

    first, second = memo.load(payload, own_namespace), memo.load(payload, own_namespace)
    assert first is not second and memo.hits == 0


def test_callable_objects_are_not_memoized() -> None:
    class Shell:
        def __init__(self) -> None:
            self.runs = 0

        def __call__(self) -> int:
            self.runs += 1
            return self.runs

    memo = PayloadMemo()
    first, second = memo.load("x", lambda _: Shell()), memo.load("x", lambda _: Shell())
    assert first is not second and memo.hits == 0


def test_bounded_by_count_and_payload_size() -> None:
    memo = PayloadMemo(size=4, max_payload=100)
    for i in range(10):
        memo.load(f"payload-{i}", lambda p: p.upper())
    assert len(memo._entries) == 4
    assert memo.load("payload-9", lambda p: "fresh") == "PAYLOAD-9"
    assert memo.load("payload-0", lambda p: "fresh") == "fresh"  # evicted long ago
    big = "y" * 101
    memo.load(big, lambda p: "a")
    assert memo.load(big, lambda p: "b") == "b"


@pytest.mark.parametrize("values", [(1, True, 1.0), (0.0, -0.0), ("1", 1), (None, 0, False)])
def test_result_memo_keeps_equal_values_of_other_types_apart(values: tuple[Any, ...]) -> None:
    memo = PayloadMemo()
    for _ in range(2):
        for value in values:
            payload = memo.dump(value, [], serialize_result)
            assert payload == serialize_result(value, [])
            back = deserialize(payload)
            assert back == value and type(back) is type(value)
            if isinstance(value, float):
                assert str(back) == str(value)  # -0.0 stays -0.0


def test_result_memo_honours_result_serializers() -> None:
    memo = PayloadMemo()
    json_path = "globus_compute_sdk.serialize.JSONData"
    assert memo.dump(7, [], serialize_result).startswith(DEFAULT_DATA.identifier)
    assert memo.dump(7, [json_path], serialize_result) == serialize_result(7, [json_path])
    assert memo.dump(7, [], serialize_result).startswith(DEFAULT_DATA.identifier)
