"""Validation problems that point below the field a validator sits on.

Pydantic places an error at the field (or model) whose validator raised it. Many of our
checks know better: a bad launcher key found while checking ``engine.provider`` belongs at
``engine.provider.launcher.bogus``, and the loader can only name the right YAML line if it
knows that path. So validators raise one `PydanticCustomError` of type `ISSUES` whose
context carries every problem with its path relative to the validator's location; the loader
expands it into one message per problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import NoReturn

from pydantic_core import PydanticCustomError

#: A path relative to where the validator runs, and the message for it.
Issue = tuple[tuple[str, ...], str]

ISSUES = "config_issues"


def fail(issues: Iterable[Issue]) -> NoReturn:
    """Raise every issue at once (the caller checks that there is at least one)."""
    found = list(issues)
    summary = "; ".join(f"{'.'.join(path) or '<here>'}: {msg}" for path, msg in found)
    raise PydanticCustomError(ISSUES, "{summary}", {"summary": summary, "issues": found})


def fail_at(key: str, message: str) -> NoReturn:
    fail([((key,), message)])


def did_you_mean(key: str, candidates: Iterable[str]) -> str:
    """A "; did you mean X?" suffix when one candidate is close to ``key``, else ""."""
    close = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""
