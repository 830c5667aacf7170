"""The fault suite's summary: every case's exactly-once counts in one table at the end.

`FAULT_REPORT=path` also writes the lines to a file, so a release can keep its counts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fault.harness import COUNT_LINES
from tests.timeouts import set_suite_timeout

#: A stall case waits out a 60 s network stall (FAULT_STALL_S), then up to 150 s more for the
#: results, after its module's stack (broker, service, endpoint) started in its setup: more
#: than the global 300 s can hold, and still a bound on a hang.
SUITE_TIMEOUT_S = 600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    set_suite_timeout(items, Path(__file__).parent, SUITE_TIMEOUT_S)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNT_LINES:
        return
    terminalreporter.section("fault cases: exactly-once counts")
    for line in COUNT_LINES:
        terminalreporter.write_line(line)
    bad = [line for line in COUNT_LINES if " lost=0 duplicated=0 unexpected=0 " not in line]
    copies = sum(int(line.rsplit("redelivered=", 1)[1]) for line in COUNT_LINES)
    terminalreporter.write_line(
        f"{len(COUNT_LINES)} runs, {len(bad)} with loss or duplicates; "
        f"{copies} redelivered copies of a forwarded result (the SDK keeps the first)"
    )
    target = os.environ.get("FAULT_REPORT")
    if target:
        Path(target).write_text("\n".join(COUNT_LINES) + "\n")
