"""appliance/ci-example.yml: pinned as documented, and its steps really run a user's functions.

The job's `run:` steps execute here as GitHub's runner would run them (bash -eo pipefail, the
job's env, $GITHUB_ENV carried from step to step), against the locally built all-in-one image
instead of the pinned registry one. Not run: the `uses:` steps (checkout, setup-python) and
the SDK install, which the peer venv stands in for.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.appliance.conftest import PREFIX, ROOT, Images, docker, sdk_port

EXAMPLE = ROOT / "appliance" / "ci-example.yml"
NOT_RUN_HERE = {"Install the official SDK"}


def job() -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    return dict(doc["jobs"]["functions"])


def test_the_image_is_pinned_by_tag_and_digest_and_actions_by_commit() -> None:
    image = job()["env"]["COMPUTE_IMAGE"]
    assert re.fullmatch(r"[\w./-]+/compute-endpoint-all-in-one:[\w.]+@sha256:[0-9a-f]{64}", image)
    uses = [step["uses"] for step in job()["steps"] if "uses" in step]
    assert uses and all(re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", u) for u in uses), uses


def run_steps(steps: list[dict[str, Any]], env: dict[str, str], tmp: Path) -> list[str]:
    github_env = tmp / "github_env"
    github_env.touch()
    outputs = []
    for step in steps:
        if "run" not in step or step["name"] in NOT_RUN_HERE:
            continue
        script = tmp / "step.sh"
        script.write_text(step["run"])
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            env={**env, "GITHUB_ENV": str(github_env), "RUNNER_TEMP": str(tmp)},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"step {step['name']!r} failed:\n" + "\n".join(outputs)
        for line in github_env.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
    return outputs


def test_the_jobs_steps_run_the_users_functions_on_the_local_image(
    images: Images, peer_python: Path, tmp_path: Path
) -> None:
    sdk_port()
    name = f"{PREFIX}-ci-example"
    env = {
        **os.environ,
        **{k: str(v) for k, v in job()["env"].items()},
        "COMPUTE_IMAGE": images.all_in_one,
        "APPLIANCE": name,
        # `python` in the steps is the runner's setup-python; here the official SDK's venv.
        "PATH": f"{peer_python.parent}:{os.environ['PATH']}",
    }
    started = time.monotonic()
    try:
        outputs = run_steps(job()["steps"], env, tmp_path)
    finally:
        # Started by the job's own `docker run`, without our session label: removed by name.
        docker("rm", "--force", "--volumes", name, check=False)
    print(f"\n[appliance] ci-example steps: {time.monotonic() - started:.0f}s")
    assert "the endpoint runs Python 3.11" in "\n".join(outputs)
    assert env["ENDPOINT_ID"] and env["GLOBUS_COMPUTE_CLIENT_ID"]
