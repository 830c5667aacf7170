"""What ended a batch job: the words a lost task's error carries instead of a bare WorkerLost.

When a worker pool vanishes, Parsl reports ``ManagerLost`` naming only the manager and its
host. The user needs the batch job and what ended it: its walltime (TIMEOUT), an
``scancel`` (CANCELLED), a node failure (NODE_FAIL), the out-of-memory killer, ... This
module maps a lost manager to its block and job, and asks the scheduler about the job:
Slurm's ``scontrol show job`` (kept ``MinJobAge`` after the job ends, and it needs no
accounting database); any other provider through its own ``status`` call.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

#: How long the scheduler may take to answer (this runs on Parsl's result thread).
QUERY_TIMEOUT_S = 15
#: The fields of `scontrol show job` worth quoting.
_SLURM_FIELDS = ("JobState", "Reason", "ExitCode", "RunTime", "TimeLimit", "NodeList", "Restarts")
_FIELD = re.compile(r"\b(\w+)=(\S*)")
_REQUEUED_STATES = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING")


def lost_pool_context(
    exc: BaseException, executor: Any, manager_blocks: dict[str, str]
) -> str | None:
    """ "The worker pool on H (block B, batch job J) was lost; the scheduler says: ...", or
    None when the exception names no manager we know."""
    manager = getattr(exc, "manager_id", None)
    if isinstance(manager, bytes):
        manager = manager.decode(errors="replace")
    block_id = manager_blocks.get(str(manager)) if manager is not None else None
    if block_id is None:
        return None
    host = getattr(exc, "hostname", None) or "?"
    job_id = (getattr(executor, "blocks_to_job_id", None) or {}).get(block_id)
    if job_id is None:
        return f"The worker pool on {host} (block {block_id}) was lost."
    said = describe_job(getattr(executor, "provider", None), str(job_id))
    return (
        f"The worker pool on {host} (block {block_id}, batch job {job_id}) was lost"
        + (f"; the scheduler says: {said}" if said else "")
        + "."
    )


def describe_job(provider: Any, job_id: str) -> str:
    """The scheduler's account of one job, or "" when it cannot say."""
    try:
        if type(provider).__name__ == "SlurmProvider":
            return _slurm(provider, job_id)
        if provider is not None:
            return _generic(provider, job_id)
    except Exception as e:  # the scheduler is unreachable: the error still names the job
        log.info("could not ask the scheduler about job %s: %s", job_id, e)
    return ""


def _slurm(provider: Any, job_id: str) -> str:
    code, out, _err = provider.execute_wait(
        f"scontrol -o show job {job_id}", timeout=QUERY_TIMEOUT_S
    )
    if code != 0:
        return _generic(provider, job_id)  # forgotten already (MinJobAge): squeue's view
    fields = dict(_FIELD.findall(out))
    parts = [f"{name}={fields[name]}" for name in _SLURM_FIELDS if fields.get(name)]
    if fields.get("Restarts", "0") != "0" and fields.get("JobState") in _REQUEUED_STATES:
        # A node failure (or an operator) put the job back in the queue: it runs again, as
        # the same job id, with a new worker pool.
        parts.append("(requeued: it will run again as the same job)")
    return " ".join(parts)


def _generic(provider: Any, job_id: str) -> str:
    (status,) = provider.status([job_id])
    message = f" ({status.message})" if getattr(status, "message", None) else ""
    return f"{status.state.name}{message}"


__all__ = ["describe_job", "lost_pool_context"]
