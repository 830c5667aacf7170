"""The fault checker's arithmetic: lost, duplicated (another result) and redelivered (a copy)."""

from __future__ import annotations

from endpoint.protocol.messages import Result
from tests.fault.harness import Outcome


def result(task_id: str, data: str = "x", at: int = 1) -> Result:
    return Result(task_id=task_id, data=data, task_statuses=[{"timestamp": at}])


def test_every_kind_of_extra_is_counted_apart() -> None:
    outcome = Outcome(
        {"a", "b", "c", "d"},
        [
            result("a"),
            result("a"),  # the same Result again: a redelivered copy
            result("b"),
            result("b", at=2),  # ran again: a duplicate
            result("c"),
            result("z"),  # never submitted
        ],
    )
    assert (outcome.lost, outcome.duplicated, outcome.redelivered, outcome.unexpected) == (
        1,
        1,
        1,
        1,
    )
    assert outcome.line("x") == (
        "x submitted=4 results=6 lost=1 duplicated=1 unexpected=1 redelivered=1"
    )


def test_a_clean_run_is_all_zero() -> None:
    outcome = Outcome({"a", "b"}, [result("b"), result("a")])
    assert outcome.line("ok").endswith("lost=0 duplicated=0 unexpected=0 redelivered=0")
