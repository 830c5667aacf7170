"""The block breaker's count (endpoint.engines.htex.breaker): consecutive blocks that ended
without a worker ever connecting trip it; a block that connected resets it; blocks scaled in
or still live are neutral; and its report names the jobs, their scripts and output."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from parsl.jobs.states import JobState, JobStatus

from endpoint.engines.htex.breaker import BlockBreaker, report


def states(**by_block: JobState) -> dict[str, JobStatus]:
    return {block.removeprefix("b"): JobStatus(state) for block, state in by_block.items()}


def test_three_blocks_in_a_row_that_never_connected_trip_it() -> None:
    breaker = BlockBreaker(3)
    assert not breaker.observe(states(b0=JobState.MISSING, b1=JobState.FAILED), [])
    assert breaker.observe(states(b0=JobState.MISSING, b1=JobState.FAILED, b2=JobState.MISSING), [])
    assert breaker.streak == ["0", "1", "2"]


def test_a_block_whose_worker_connected_resets_the_count() -> None:
    breaker = BlockBreaker(3)
    seen = states(b0=JobState.MISSING, b1=JobState.MISSING, b2=JobState.CANCELLED)
    assert not breaker.observe(seen, ["2"])  # block 2 worked, then was scancelled
    assert breaker.streak == []
    seen.update(states(b3=JobState.MISSING, b4=JobState.MISSING))
    assert not breaker.observe(seen, ["2"])
    assert breaker.streak == ["3", "4"]


def test_a_live_block_with_a_worker_resets_the_count_too() -> None:
    breaker = BlockBreaker(2)
    assert not breaker.observe(states(b0=JobState.MISSING, b1=JobState.RUNNING), ["1"])
    assert breaker.streak == []


def test_a_failed_block_that_had_connected_is_not_a_start_failure() -> None:
    """A node failure of a working block (FAILED with accounting) must not trip it."""
    breaker = BlockBreaker(1)
    assert not breaker.observe(states(b0=JobState.FAILED), ["0"])


def test_scaled_in_pending_and_running_blocks_are_neutral() -> None:
    breaker = BlockBreaker(2)
    seen = states(
        b0=JobState.MISSING, b1=JobState.SCALED_IN, b2=JobState.PENDING, b3=JobState.RUNNING
    )
    assert not breaker.observe(seen, [])
    assert breaker.streak == ["0"]
    seen.update(states(b4=JobState.MISSING))
    assert breaker.observe(seen, [])


def test_each_block_is_judged_once_and_ids_sort_as_numbers() -> None:
    breaker = BlockBreaker(3)
    seen = {str(i): JobStatus(JobState.MISSING) for i in (9, 10)}
    for _ in range(3):
        assert not breaker.observe(seen, [])
    assert breaker.streak == ["9", "10"]


def test_zero_turns_it_off() -> None:
    breaker = BlockBreaker(0)
    assert not breaker.observe({str(i): JobStatus(JobState.FAILED) for i in range(20)}, [])


def test_the_report_names_jobs_scripts_and_output_tails(tmp_path: Path) -> None:
    script = tmp_path / "parsl.htex.block-0.1.000"
    script.write_text("#!/bin/bash\nexit 1\n")
    Path(f"{script}.stdout").write_text("".join(f"line {i}\n" for i in range(40)))
    Path(f"{script}.stderr").write_text("worker_init: conda: command not found\n")
    never = tmp_path / "parsl.htex.block-1.2.000"
    never.write_text("#!/bin/bash\n")
    provider: Any = SimpleNamespace(
        script_dir=str(tmp_path),
        resources={"4242": {"job_stdout_path": f"{script}.stdout"}},
    )
    executor: Any = SimpleNamespace(
        label="htex",
        provider=provider,
        blocks_to_job_id={"0": "4242"},
        status_facade={
            "0": JobStatus(JobState.MISSING, "workers failed to register"),
            "1": JobStatus(JobState.FAILED, "Failed to start block 1: sbatch: invalid partition"),
        },
    )
    text = report("ep-engine", executor, ["0", "1"], 300)
    assert "2 batch jobs in a row ended before any worker connected" in text
    assert "no new blocks for 300 s" in text
    assert "block 0: job 4242, MISSING" in text
    assert f"submit script: {script}" in text
    assert "line 39" in text and "line 5\n" not in text  # the tail, not the whole file
    assert "conda: command not found" in text
    assert "block 1: never submitted, FAILED" in text
    assert "sbatch: invalid partition" in text
    assert f"submit script: {never}" in text
