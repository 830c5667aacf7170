"""The official SDK 4.19 against the service's submission limit (10 MiB by default).

Over the limit the submit itself fails: the SDK raises `GlobusAPIError` with HTTP 413 and code
``TASK_PAYLOAD_TOO_LARGE`` (not retried), and nothing reaches the endpoint. The limit counts
what the SDK sends: function code plus every task's serialized payload. The SDK pickles an
argument and base64-encodes it (4/3 of its size), so a 9 MB submission carries a ~6.7 MB
argument, and a 9 MB argument (~12.2 MB sent) is over the limit.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import SdkRunner
from webservice.limits import MAX_SUBMISSION_BYTES

MB = 1_000_000

SUBMIT = """
import json
from globus_compute_sdk import Executor
from globus_compute_sdk.serialize import ComputeSerializer
from globus_sdk import GlobusAPIError

def size(blob):
    return len(blob)

blob = b"x" * {n}
sent = len(ComputeSerializer().serialize(((blob,), {{}})))
with Executor(endpoint_id={ep!r}) as ex:
    try:
        out = {{"result": ex.submit(size, blob).result(timeout=180)}}
    except GlobusAPIError as e:
        out = {{"http_status": e.http_status, "code": e.code, "message": e.message}}
out["sent"] = sent
print(json.dumps(out))
"""


def _submit(run_sdk: SdkRunner, endpoint: str, argument_bytes: int) -> Any:
    out = run_sdk(SUBMIT.format(n=argument_bytes, ep=endpoint), timeout=400)
    print(f"argument {argument_bytes} bytes, payload {out['sent']} bytes: {out}")
    return out


def _assert_refused(out: Any) -> None:
    assert out["sent"] > MAX_SUBMISSION_BYTES
    assert out["http_status"] == 413, out
    assert out["code"] == "TASK_PAYLOAD_TOO_LARGE", out
    assert f"{MAX_SUBMISSION_BYTES} bytes" in out["message"], out


def test_an_11_mb_argument_is_refused_at_submit(our_endpoint: str, run_sdk: SdkRunner) -> None:
    _assert_refused(_submit(run_sdk, our_endpoint, 11 * MB))


def test_a_28_7_mb_submission_is_refused_at_submit(our_endpoint: str, run_sdk: SdkRunner) -> None:
    # The case: refused from the declared Content-Length, before the body is read.
    out = _submit(run_sdk, our_endpoint, 21_245_000)
    assert 28.5 * MB < out["sent"] < 29 * MB
    _assert_refused(out)


def test_a_9_mb_submission_still_runs(our_endpoint: str, run_sdk: SdkRunner) -> None:
    out = _submit(run_sdk, our_endpoint, 6_700_000)
    assert 9 * MB < out["sent"] < MAX_SUBMISSION_BYTES
    assert out.get("result") == 6_700_000, out
