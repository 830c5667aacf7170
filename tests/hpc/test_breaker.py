"""The block breaker on a real Slurm: configs whose blocks can never start a worker.

A wrong partition, an account the cluster lacks (tools/slurm-up's job_submit.lua refuses it
as a site's accounting would) and a `worker_init` that exits 1 each make every block fail.
After `max_failures` blocks in a row the engine stops submitting: the waiting tasks fail
with a report naming the jobs, their submit scripts and output; status and health say why;
and not one more `sbatch` runs while the back-off lasts. A fixed config and a restart run
tasks again.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.hpc.conftest import PARTITION, HpcStack, ended_as, wait_for
from tests.hpc.test_slurm import PRELUDE, StartEndpoint, config

pytestmark = pytest.mark.hpc

#: Long enough that no back-off ends within a test.
BACKOFF_S = 900
#: Status polls (squeue) every second, so failed blocks are seen fast.
FAST_POLL = "    status_polling_interval: 1\n"

FAIL_EACH = """
from globus_compute_sdk.errors import TaskExecutionFailed
out = []
with Executor(endpoint_id=EP) as ex:
    for _ in range({n}):
        try:
            out.append(["ok", ex.submit(where, 0).result(timeout=400)])
        except TaskExecutionFailed as e:
            out.append(["failed", str(e)])
print(json.dumps(out))
"""


def breaker_config(name: str, max_failures: int, **kwargs: object) -> str:
    """`config()` with a fast status poll and the breaker's settings."""
    cfg = config(name, **kwargs)  # type: ignore[arg-type]
    cfg = cfg.replace("    strategy_period: 0.5\n", "    strategy_period: 0.5\n" + FAST_POLL)
    return cfg + (f"  block_breaker:\n    max_failures: {max_failures}\n    backoff: {BACKOFF_S}\n")


def submit_scripts(hpc: HpcStack, name: str) -> list[Path]:
    """One per sbatch call: Parsl writes the script before it runs sbatch, failing or not."""
    found = hpc.endpoint_dir(name).rglob("submit_scripts/parsl.*")
    return [p for p in found if p.suffix not in (".stdout", ".stderr", ".sh")]


def endpoint_id(hpc: HpcStack, name: str) -> str:
    doc = json.loads((hpc.endpoint_dir(name) / "endpoint.json").read_text())
    return str(doc["endpoint_id"])


def assert_tripped(hpc: HpcStack, name: str) -> dict[str, object]:
    """status shows the open block breaker; health fails naming it."""
    status = json.loads(hpc.compute_endpoint("status", name, "--format", "json").stdout)
    breaker = status.get("engine_breaker") or {}
    assert breaker.get("state") == "open" and breaker.get("kind") == "blocks", status
    health = hpc.compute_endpoint("health", name)
    text = health.stdout + health.stderr
    assert health.returncode == 1 and "batch jobs keep failing; no new blocks" in text, text
    return dict(breaker)


def assert_no_new_sbatch(hpc: HpcStack, name: str, calls: int) -> None:
    """More tasks fail fast, and several status polls later no sbatch ran since the trip."""
    ep = endpoint_id(hpc, name)
    more = hpc.run_sdk(PRELUDE.format(ep=ep) + FAIL_EACH.format(n=3), name)
    assert [kind for kind, _ in more] == ["failed"] * 3, more
    assert all("batch jobs in a row ended before any worker connected" in t for _, t in more)
    time.sleep(5)  # five status polls and ten strategy periods: room for a runaway submit
    assert len(submit_scripts(hpc, name)) == calls, "a block was submitted after the trip"


@pytest.mark.parametrize(
    ("case", "edit", "refusal"),
    [
        ("partition", (f"partition: {PARTITION}", "partition: nosuchpart"), "invalid partition"),
        (
            "account",
            (f"partition: {PARTITION}\n", f"partition: {PARTITION}\n    account: nosuchacct\n"),
            "account 'nosuchacct' does not exist",
        ),
    ],
)
def test_a_refused_submission_trips_the_breaker_and_no_more_jobs_are_submitted(
    hpc: HpcStack,
    endpoint_factory: StartEndpoint,
    case: str,
    edit: tuple[str, str],
    refusal: str,
) -> None:
    name = f"breaker-{case}"
    cfg = breaker_config(name, max_failures=3).replace(*edit)
    endpoint_factory(name, cfg)
    ep = endpoint_id(hpc, name)
    (kind, text), *_ = hpc.run_sdk(PRELUDE.format(ep=ep) + FAIL_EACH.format(n=1), name)
    assert kind == "failed", text
    # The report: how many in a row, each block never submitted, sbatch's own words, and
    # where the script is.
    assert "3 batch jobs in a row ended before any worker connected" in text, text
    assert "block 0: never submitted" in text and refusal in text.lower(), text
    assert "submit script: " in text and "/submit_scripts/parsl." in text, text
    breaker = assert_tripped(hpc, name)
    assert refusal in str(breaker["reason"]).lower(), breaker
    # One sbatch per failed block, and the breaker trips before the strategy's next tick.
    calls = len(submit_scripts(hpc, name))
    assert calls == 3, calls
    assert_no_new_sbatch(hpc, name, calls)


GOOD_TASK = """
with Executor(endpoint_id=EP) as ex:
    print(json.dumps(ex.submit(where, 0).result(timeout=400)))
"""


def test_a_worker_init_that_exits_trips_the_breaker_and_a_fixed_config_recovers(
    hpc: HpcStack, endpoint_factory: StartEndpoint
) -> None:
    name = "breaker-worker-init"
    bad_init = "echo 'module: nosuchmodule/1.0 not found' >&2; exit 1"
    endpoint_factory(name, breaker_config(name, max_failures=2, worker_init=bad_init))
    ep = endpoint_id(hpc, name)
    (kind, text), *_ = hpc.run_sdk(PRELUDE.format(ep=ep) + FAIL_EACH.format(n=1), name)
    assert kind == "failed", text
    print(f"\n[hpc] {name}: the task's error:\n{text}")
    # The blocks were real batch jobs that ran, printed worker_init's complaint and ended
    # without a worker ever connecting.
    jobs = re.findall(r"block \d+: job (\d+), MISSING", text)
    assert len(jobs) >= 2, text
    assert "module: nosuchmodule/1.0 not found" in text, text
    assert all(ended_as(job) in ("COMPLETED", "FAILED") for job in jobs), jobs
    assert_tripped(hpc, name)
    assert len(submit_scripts(hpc, name)) == 2
    assert_no_new_sbatch(hpc, name, 2)

    # The user fixes worker_init and restarts: blocks start again and tasks run in them.
    hpc.stack.stop_endpoint(name)
    endpoint_factory(name, breaker_config(name, max_failures=2))
    where = hpc.run_sdk(PRELUDE.format(ep=ep) + GOOD_TASK, name)
    assert where[0].isdigit() and where[0] not in jobs, where
    wait_for(
        f"{name} to report healthy again",
        lambda: hpc.compute_endpoint("health", name).returncode == 0,
    )
