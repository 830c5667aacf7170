"""The official SDK 4.19 against an endpoint with an authentication policy.

`compute-endpoint configure --allowed-domains example.org` creates the policy at the service
(with the endpoint's own credentials) and writes its id; the endpoint registers with it. The
SDK's client identity is `<client id>@clients.auth.globus.org`, outside the policy, so its
submit fails with `GlobusAPIError` 403 `AUTHENTICATION_POLICY_VIOLATION`, and with
`--excluded-domains example.org` instead the same client's task runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from devstack.stack import Stack
from tests.e2e.conftest import SdkRunner

BIN = Path(sys.executable).parent

SUBMIT = """
import json
from globus_compute_sdk import Executor
from globus_sdk import GlobusAPIError

def double(x):
    return 2 * x

with Executor(endpoint_id={ep!r}) as ex:
    try:
        out = {{"result": ex.submit(double, 21).result(timeout=120)}}
    except GlobusAPIError as e:
        out = {{"http_status": e.http_status, "code": e.code, "message": e.message}}
print(json.dumps(out))
"""


def _configured(stack: Stack, name: str, *flags: str) -> str:
    user = stack.root / "user"
    out = subprocess.run(
        [str(BIN / "compute-endpoint"), "configure", *flags, name],
        env=stack.client_env(user),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    policy_id: str = yaml.safe_load((user / name / "config.yaml").read_text())[
        "authentication_policy"
    ]
    return policy_id


def _run(stack: Stack, run_sdk: SdkRunner, name: str) -> dict[str, object]:
    endpoint_id = stack.start_endpoint(name)
    try:
        out: dict[str, object] = run_sdk(SUBMIT.format(ep=endpoint_id), timeout=200)
    finally:
        stack.stop_endpoint(name)
    return out


def test_a_submitter_outside_the_allowed_domains_gets_403(stack: Stack, run_sdk: SdkRunner) -> None:
    assert _configured(stack, "policy-allow", "--allowed-domains", "example.org")
    out = _run(stack, run_sdk, "policy-allow")
    assert out["http_status"] == 403, out
    assert out["code"] == "AUTHENTICATION_POLICY_VIOLATION", out
    assert "clients.auth.globus.org" in str(out["message"]), out


def test_a_submitter_outside_the_excluded_domains_runs(stack: Stack, run_sdk: SdkRunner) -> None:
    assert _configured(stack, "policy-exclude", "--excluded-domains", "example.org")
    assert _run(stack, run_sdk, "policy-exclude") == {"result": 42}
