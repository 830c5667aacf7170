"""The test gate itself (issue 12): strict types, a complexity bound, warnings as errors, a
per-test timeout, and no test that asserts how long something took.

The settings live in pyproject.toml, where `make lint`, `make typecheck` and `make test` read
them; this pins them there, so relaxing one is a visible change to a test, not a quiet edit.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
CLOCKS = {"monotonic", "time", "perf_counter", "monotonic_ns", "time_ns", "perf_counter_ns"}


@cache
def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_mypy_is_strict_over_product_bench_and_tests() -> None:
    mypy = _pyproject()["tool"]["mypy"]
    assert mypy["strict"] is True
    assert {"endpoint", "webservice", "devstack", "bench", "tests"} <= set(mypy["packages"])
    # Overrides only say where a library has no types (or is untyped: skip following it); none
    # turns a check off for our code.
    ours = ("endpoint", "webservice", "devstack", "bench", "tests", "appliance")
    for override in mypy.get("overrides", []):
        assert set(override) - {"follow_imports"} == {"module", "ignore_missing_imports"}
        assert override.get("follow_imports", "skip") == "skip", override
        modules = (
            override["module"] if isinstance(override["module"], list) else [override["module"]]
        )
        assert not [m for m in modules if m.split(".")[0] in ours], override


def test_ruff_bounds_complexity() -> None:
    lint = _pyproject()["tool"]["ruff"]["lint"]
    assert "C90" in lint["select"] or "C901" in lint["select"]
    assert lint["mccabe"]["max-complexity"] <= 10


def test_pytest_turns_warnings_into_errors_and_times_every_test_out() -> None:
    options = _pyproject()["tool"]["pytest"]["ini_options"]
    filters = options["filterwarnings"]
    assert filters[0] == "error"
    # The exceptions are narrow: a category and a message or a module, never a whole category.
    for line in filters[1:]:
        action, message, category, module = [*line.split(":"), "", "", ""][:4]
        assert action == "ignore" and category and (message or module), line
    assert 0 < int(options["timeout"]) <= 600


def _is_clock_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCKS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "time"
    )


def _is_clock_difference(node: ast.AST) -> bool:
    """`time.monotonic() - began` (time elapsed) anywhere inside `node`; `deadline -
    time.monotonic()` is time left before a deadline, and is not one."""
    return any(
        isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Sub) and _is_clock_call(sub.left)
        for sub in ast.walk(node)
    )


def _durations(fn: ast.AST) -> set[str]:
    """Names a function assigns a clock difference to (`elapsed = time.monotonic() - t0`)."""
    return {
        target.id
        for node in ast.walk(fn)
        if isinstance(node, ast.Assign) and _is_clock_difference(node.value)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _timed_assertions(tree: ast.AST) -> Iterator[int]:
    """Line numbers of asserts that bound a measured duration (`assert elapsed < N`).

    A deadline (`assert time.monotonic() < deadline`) compares a clock with a point in time,
    not a duration, and is allowed: it only stops a wait.
    """
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        durations = _durations(fn)
        for node in ast.walk(fn):
            if not isinstance(node, ast.Assert):
                continue
            for cmp in ast.walk(node.test):
                if isinstance(cmp, ast.Compare) and _bounds_a_duration(cmp, durations):
                    yield node.lineno


def _bounds_a_duration(cmp: ast.Compare, durations: set[str]) -> bool:
    sides = [cmp.left, *cmp.comparators]
    ordered = any(isinstance(op, ast.Lt | ast.LtE | ast.Gt | ast.GtE) for op in cmp.ops)
    measured = any(
        _is_clock_difference(side) or (isinstance(side, ast.Name) and side.id in durations)
        for side in sides
    )
    return ordered and measured


def _found() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        lines = list(_timed_assertions(ast.parse(path.read_text(), str(path))))
        if lines:
            found[str(path.relative_to(ROOT))] = sorted(set(lines))
    return found


def test_no_test_asserts_how_long_something_took() -> None:
    """Assert the behaviour; a figure goes to a benchmark under bench/ that prints it."""
    found = _found()
    assert not found, f"timed assertions (file: lines): {found}"


def test_the_timed_assertion_finder_finds_them() -> None:
    # The bounds are filled in below, so that this text is no timed assertion itself.
    source = (
        "def t():\n"
        "    began = time.monotonic()\n"
        "    assert time.monotonic() - began < {short}\n"
        "    elapsed = time.perf_counter() - began\n"
        "    assert elapsed < {short} and ok\n"
        "    deadline = time.monotonic() + 30\n"
        "    assert time.monotonic() < deadline\n"
        "    left = deadline - time.monotonic()\n"
        "    assert left > 0\n"
    ).format(short="BOUND")
    assert list(_timed_assertions(ast.parse(source))) == [3, 5]
