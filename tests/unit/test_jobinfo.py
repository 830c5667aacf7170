"""What ended a batch job (endpoint.engines.htex.jobinfo): a lost worker pool's error names
its block, its batch job and the scheduler's account of the job, from Slurm's scontrol or
another provider's own status call; a scheduler that cannot answer still leaves the job id."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from parsl.executors.high_throughput.errors import ManagerLost
from parsl.jobs.states import JobState, JobStatus

from endpoint.engines.htex.jobinfo import describe_job, lost_pool_context

SCONTROL = (
    "JobId=123 JobName=parsl.x.block-0.1 UserId=root(0) JobState=TIMEOUT Reason=TimeLimit "
    "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:15 RunTime=00:01:27 "
    "TimeLimit=00:01:00 NodeList=c1 BatchHost=c1\n"
)


class SlurmProvider:
    """Named like Parsl's, so jobinfo asks it through scontrol."""

    def __init__(self, code: int, out: str) -> None:
        self.code, self.out = code, out
        self.commands: list[str] = []

    def execute_wait(self, cmd: str, timeout: float | None = None) -> tuple[int, str, str]:
        self.commands.append(cmd)
        return self.code, self.out, ""

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        return [JobStatus(JobState.COMPLETED) for _ in job_ids]


def test_slurm_jobs_are_described_from_scontrol() -> None:
    provider = SlurmProvider(0, SCONTROL)
    said = describe_job(provider, "123")
    assert provider.commands == ["scontrol -o show job 123"]
    assert said == (
        "JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15 RunTime=00:01:27 TimeLimit=00:01:00 "
        "NodeList=c1 Restarts=0"
    )


def test_a_requeued_job_says_so() -> None:
    out = SCONTROL.replace("JobState=TIMEOUT", "JobState=PENDING").replace(
        "Restarts=0", "Restarts=1"
    )
    assert describe_job(SlurmProvider(0, out), "123").endswith(
        "(requeued: it will run again as the same job)"
    )


def test_a_job_slurm_forgot_falls_back_to_the_provider_status() -> None:
    assert describe_job(SlurmProvider(1, ""), "123") == "COMPLETED"


def test_other_providers_answer_through_their_status_call() -> None:
    provider: Any = SimpleNamespace(
        status=lambda ids: [JobStatus(JobState.FAILED, "node lost") for _ in ids]
    )
    assert describe_job(provider, "7") == "FAILED (node lost)"


def test_a_scheduler_that_cannot_answer_leaves_the_job_id() -> None:
    def broken(cmd: str, timeout: float | None = None) -> tuple[int, str, str]:
        raise TimeoutError("scontrol hung")

    provider = SlurmProvider(0, "")
    provider.execute_wait = broken  # type: ignore[method-assign]
    executor: Any = SimpleNamespace(provider=provider, blocks_to_job_id={"0": "123"})
    exc = ManagerLost(b"abc123", "node7")
    assert lost_pool_context(exc, executor, {"abc123": "0"}) == (
        "The worker pool on node7 (block 0, batch job 123) was lost."
    )


def test_the_lost_manager_maps_to_its_block_and_job() -> None:
    executor: Any = SimpleNamespace(
        provider=SlurmProvider(0, SCONTROL), blocks_to_job_id={"0": "123"}
    )
    text = lost_pool_context(ManagerLost(b"abc123", "c1"), executor, {"abc123": "0"})
    assert text is not None
    assert text.startswith("The worker pool on c1 (block 0, batch job 123) was lost;")
    assert "the scheduler says: JobState=TIMEOUT Reason=TimeLimit" in text
    # A manager never seen (it connected and died between two looks): no guess.
    assert lost_pool_context(ManagerLost(b"zzz", "c1"), executor, {"abc123": "0"}) is None
