"""Per-suite test timeouts, for suites where pyproject.toml's global one (300 s) is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest


def set_suite_timeout(items: list[pytest.Item], suite: Path, seconds: int) -> None:
    """Give every test under `suite` `seconds` (setup included: session fixtures count against
    the first test that uses them), unless the test or its module names its own."""
    for item in items:
        if suite in item.path.parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(seconds))
