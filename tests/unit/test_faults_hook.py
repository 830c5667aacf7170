"""The fault-injection hook: off by default, strict about its spec, fires on the n-th pass."""

from __future__ import annotations

import pytest

from endpoint.errors import ConfigError
from endpoint.runtime import faults


def test_unset_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.ENV, raising=False)
    hook = faults.from_env()
    assert hook is faults._noop
    hook("delivered")  # nothing happens: the process is still here


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [("nowhere", "unknown point 'nowhere'"), ("acked:x", "integer"), ("acked:0", "at least 1")],
)
def test_bad_specs_are_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, spec: str, fragment: str
) -> None:
    monkeypatch.setenv(faults.ENV, spec)
    with pytest.raises(ConfigError, match=fragment):
        faults.from_env()


def test_parse_defaults_to_the_first_pass() -> None:
    assert faults.parse("journaled") == ("journaled", 1)
    assert faults.parse(" published:7 ") == ("published", 7)


def test_armed_fires_once_on_the_nth_pass_of_its_point() -> None:
    deaths: list[int] = []
    hook = faults.armed("journaled", 3, lambda: deaths.append(1))
    for point in ["delivered", "journaled", "acked", "journaled", "delivered"]:
        hook(point)
    assert deaths == []
    hook("journaled")
    hook("journaled")
    assert deaths == [1]
