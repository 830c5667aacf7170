"""EnvSlot: per-task environment variables seen everywhere, without growing the process."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import psutil
import pytest

from endpoint.worker.taskenv import CAPACITY, EnvSlot

NAME = "CCEP_TEST_SLOT"


@pytest.fixture
def slot() -> Iterator[EnvSlot]:
    yield EnvSlot(NAME)
    os.environ.pop(NAME, None)


def _child_sees() -> str:
    # A subprocess inherits the C environment, not os.environ's mapping: both must agree.
    return subprocess.run(
        ["sh", "-c", f'printf %s "${NAME}"'], capture_output=True, text=True, check=True
    ).stdout


def test_the_value_is_in_os_environ_and_in_a_subprocess(slot: EnvSlot) -> None:
    for _ in range(3):
        value = str(uuid.uuid4())
        slot.set(value)
        assert os.environ[NAME] == value and os.getenv(NAME) == value
        assert _child_sees() == value


def test_a_removed_variable_comes_back_on_the_next_set(slot: EnvSlot) -> None:
    slot.set("first")
    del os.environ[NAME]  # what restoring the environment after a task does
    assert NAME not in os.environ and _child_sees() == ""
    slot.set("second-and-longer")
    assert os.environ[NAME] == "second-and-longer" and _child_sees() == "second-and-longer"
    slot.set("3")  # shorter than before: the buffer's old tail must not show
    assert _child_sees() == "3"


def test_a_value_too_long_for_the_buffer_still_gets_set(slot: EnvSlot) -> None:
    value = "x" * CAPACITY
    slot.set(value)
    assert os.environ[NAME] == value and _child_sees() == value


def test_setting_a_new_value_per_task_does_not_grow_the_process(slot: EnvSlot) -> None:
    me = psutil.Process()
    for _ in range(2000):  # warm-up: allocator arenas, uuid module
        slot.set(str(uuid.uuid4()))
    before = me.memory_info().rss
    for _ in range(50_000):
        slot.set(str(uuid.uuid4()))
        del os.environ[NAME]
    grown = me.memory_info().rss - before
    # os.environ under glibc grows ~95 bytes per distinct value, ~4.7 MB here.
    assert grown < 1_000_000, f"grew {grown} bytes over 50,000 values"
