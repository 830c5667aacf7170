"""The block circuit breaker: stop submitting batch jobs that cannot start a worker.

A wrong ``worker_init``, partition or account makes every block fail the same way. Parsl's
own handler either gives up at the first failed block (``init_blocks: 0``) or, switched
off, lets the scaling strategy submit one doomed job after another for as long as tasks
wait: the runaway jobs site guides tell users to stop by deleting ``daemon.pid``.

This breaker counts *consecutive* blocks that ended (or could not be submitted) without a
worker ever connecting from them. A block that connected resets the count, so a working
block lost to a walltime, an ``scancel`` or a node failure never trips it, and blocks
scaled in before they started are neutral. At ``max_failures`` in a row it trips: the
engine stops Parsl's scaling, fails its tasks with `report` (job ids, submit scripts, the
tails of the jobs' output) and asks the runtime for a back-off before a new engine tries
again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Lines and characters of a job's stdout/stderr quoted in the report.
TAIL_LINES = 12
TAIL_CHARS = 1500
#: States Parsl gives a block that ended without working: FAILED (the scheduler said so, or
#: the submit command failed) and MISSING (ended before any worker registered).
_FAILED_STATES = frozenset({"FAILED", "MISSING"})
#: What providers append to a job's script name for its output files.
_OUTPUT_SUFFIXES = (".stdout", ".stderr", ".out", ".err", ".ec")


@dataclass
class BlockBreaker:
    """Counts consecutive failed blocks; see the module docstring. Not thread-safe: the
    engine's watcher thread is its only caller."""

    max_failures: int
    streak: list[str] = field(default_factory=list)
    _judged: set[str] = field(default_factory=set)

    def observe(self, states: Mapping[str, Any], connected: Iterable[str]) -> bool:
        """Judge the blocks that ended since the last call, oldest first; True once
        `max_failures` failed in a row (0 turns the breaker off).

        `states` maps block ids to Parsl JobStatus objects; `connected` names every block a
        worker connected from (ever)."""
        ever = set(connected)
        for block_id in sorted(states, key=_block_order):
            status = states[block_id]
            if block_id in self._judged or not status.terminal:
                if block_id in ever and block_id not in self._judged:
                    # A live block with a worker: whatever failed before it was not for good.
                    self.streak.clear()
                continue
            self._judged.add(block_id)
            if block_id in ever:
                self.streak.clear()
            elif status.state.name in _FAILED_STATES:
                self.streak.append(block_id)
        return self.max_failures > 0 and len(self.streak) >= self.max_failures


def _block_order(block_id: str) -> tuple[int, str]:
    return (int(block_id), "") if block_id.isdigit() else (1 << 62, block_id)


def report(label: str, executor: Any, block_ids: list[str], backoff_s: float) -> str:
    """Why the breaker tripped: each failed block's job id, Parsl's message, submit script
    and the tails of its stdout and stderr."""
    states = dict(executor.status_facade)
    lines = [
        f"{label}: {len(block_ids)} batch jobs in a row ended before any worker connected;"
        f" no new blocks for {backoff_s:.0f} s (or until `compute-endpoint restart`)."
        " Check the provider settings (partition, account, walltime) and worker_init."
    ]
    for block_id in block_ids:
        lines += _block_lines(executor, block_id, states.get(block_id))
    return "\n".join(lines)


def _block_lines(executor: Any, block_id: str, status: Any) -> list[str]:
    job_id = (getattr(executor, "blocks_to_job_id", None) or {}).get(block_id)
    state = status.state.name if status is not None else "UNKNOWN"
    head = f"block {block_id}: " + (f"job {job_id}, " if job_id else "never submitted, ")
    exit_code = getattr(status, "exit_code", None)
    lines = [head + state + (f" (exit code {exit_code})" if exit_code is not None else "")]
    message = getattr(status, "message", None)
    if message:
        lines.append("  " + _squeeze(str(message)))
    for what, path in block_paths(executor, block_id, job_id):
        if what == "submit script":
            lines.append(f"  {what}: {path}")
            continue
        tail = _tail(path)
        lines.append(f"  {what} {path}" + (f":\n{_indent(tail)}" if tail else " (empty)"))
    return lines


def block_paths(executor: Any, block_id: str, job_id: str | None) -> list[tuple[str, str]]:
    """The block's submit script, stdout and stderr files that exist, by what they are."""
    provider = getattr(executor, "provider", None)
    info = ((getattr(provider, "resources", None) or {}).get(job_id) or {}) if job_id else {}
    stdout, stderr = info.get("job_stdout_path"), info.get("job_stderr_path")
    # Parsl writes the output beside the script, named after it plus a suffix (`.stdout`,
    # LocalProvider's `.out`).
    script = info.get("script_path") or (str(Path(stdout).with_suffix("")) if stdout else None)
    if not script or not Path(script).exists():
        script = _script_of(getattr(provider, "script_dir", None), executor, block_id)
    found = [
        ("submit script", script),
        ("stdout", stdout or _first(script, ".stdout", ".out")),
        ("stderr", stderr or _first(script, ".stderr", ".err")),
    ]
    return [(what, str(path)) for what, path in found if path and Path(path).exists()]


def _first(script: str | None, *suffixes: str) -> str | None:
    """The first of `script` + each suffix that exists."""
    found = (f"{script}{suffix}" for suffix in suffixes if script)
    return next((path for path in found if Path(path).exists()), None)


def _script_of(script_dir: str | None, executor: Any, block_id: str) -> str | None:
    """A block the provider never took a job id for: its script, by Parsl's file name."""
    if not script_dir:
        return None
    label = getattr(executor, "label", "*")
    # Parsl names jobs `parsl.<label>.block-<id>.<time>`; newest last.
    scripts = sorted(
        path
        for path in Path(script_dir).glob(f"parsl.{label}.block-{block_id}.*")
        if path.suffix not in _OUTPUT_SUFFIXES
    )
    return str(scripts[-1]) if scripts else None


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 16 * TAIL_CHARS))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.rstrip().splitlines()[-TAIL_LINES:])
    return tail[-TAIL_CHARS:]


def _indent(text: str) -> str:
    return "\n".join(f"    | {line}" for line in text.splitlines())


def _squeeze(text: str, limit: int = 1000) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["BlockBreaker", "block_paths", "report"]
