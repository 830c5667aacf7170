"""The submission limit (issue 15): refused at submit time, before anything is stored or queued.

Against `compute-webservice serve` itself and a real RabbitMQ. A submission is function code
plus every task's payload; over the limit (10 MiB by default, `--max-submission-bytes` /
COMPUTE_WEBSERVICE_MAX_SUBMISSION_BYTES) it gets 413 with code TASK_PAYLOAD_TOO_LARGE:
from the declared Content-Length before one byte of the body is read, from the streamed byte
count as soon as the body passes the cap, or, for a body under the cap, from the exact count
once parsed. Each refusal leaves the endpoint's task queue empty and stores no task and no
task group.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.testing import ApiClient
from tests.integration.test_webservice_limits import (
    CODE,
    MiB,
    Served,
    _head,
    _queue_depth,
    _read_response,
    _serve,
    _stream_until_answered,
)
from webservice.broker import PrivateRabbit
from webservice.limits import MAX_SUBMISSION_BYTES, Limits

pytestmark = pytest.mark.integration

DEFAULT_LIMIT = MAX_SUBMISSION_BYTES
SMALL_LIMIT = 1 * MiB
TOO_LARGE = "TASK_PAYLOAD_TOO_LARGE"


def sdk_payload(size: int) -> str:
    """A task payload shaped like the SDK's (length-prefixed buffers of base64 text)."""
    return "10\n00\n" + "A" * (size - 7) + "\n"


@pytest.fixture(scope="module")
def served(rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(rabbit, tmp_path_factory.mktemp("ws-submit-default"))


@pytest.fixture(scope="module")
def small(rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A service configured through its environment, as `serve` reads it."""
    tmp = tmp_path_factory.mktemp("ws-submit-small")
    yield from _serve(rabbit, tmp, MAX_SUBMISSION_BYTES="1MiB")


@pytest.fixture(scope="module")
def api(served: Served) -> Iterator[ApiClient]:
    with served.identity() as client:
        yield client


@pytest.fixture(scope="module")
def small_api(small: Served) -> Iterator[ApiClient]:
    with small.identity() as client:
        yield client


class Target:
    """One fresh endpoint (and its task queue) and function on a service."""

    def __init__(self, served: Served, api: ApiClient) -> None:
        self.served, self.api = served, api
        reg = api.register_endpoint()
        self.endpoint_id: str = reg["endpoint_id"]
        self.queue: str = reg["task_queue_info"]["queue"]
        self.function_id = api.register_function(CODE)
        self.group = str(uuid.uuid4())

    @property
    def path(self) -> str:
        return f"/v3/endpoints/{self.endpoint_id}/submit"

    def body(self, payloads: list[str]) -> dict[str, Any]:
        return {
            "tasks": {self.function_id: payloads},
            "task_group_id": self.group,
            "create_queue": True,
        }

    def submit_raw(self, content: bytes) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        return self.api.post(self.path, content=content, headers=headers)

    def assert_nothing_kept(self) -> None:
        assert _queue_depth(self.served.amqp_url, self.queue) == 0
        assert self.stored() == (0, 0)

    def stored(self) -> tuple[int, int]:
        """(tasks stored for the endpoint, task groups stored with this target's id)."""
        db = sqlite3.connect(f"file:{self.served.db}?mode=ro", uri=True)
        try:
            tasks = db.execute(
                "SELECT COUNT(*) FROM tasks WHERE endpoint_id = ?", (self.endpoint_id,)
            )
            groups = db.execute(
                "SELECT COUNT(*) FROM task_groups WHERE task_group_id = ?", (self.group,)
            )
            return int(tasks.fetchone()[0]), int(groups.fetchone()[0])
        finally:
            db.close()


def _assert_too_large(status: int, body: dict[str, Any], limit: int) -> None:
    assert status == 413, body
    assert body["code"] == TOO_LARGE, body
    assert body["http_status_code"] == 413
    assert f"{limit} bytes" in body["message"], body


# --- the default limit (10 MiB) ------------------------------------------------------------


def test_a_28_7_mb_submission_is_refused_from_its_declared_length(
    served: Served, api: ApiClient
) -> None:
    """The issue's case: nothing of the body is read (not one byte of it is even sent)."""
    target = Target(served, api)
    head = _head(
        "POST",
        target.path,
        {
            "Authorization": f"Bearer {api.token}",
            "Content-Type": "application/json",
            "Content-Length": str(28_700_000),
        },
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as sock:
        sock.sendall(head)
        status, body = _read_response(sock)
    _assert_too_large(status, body, DEFAULT_LIMIT)
    assert "28700000 bytes" in body["message"]
    target.assert_nothing_kept()


def test_a_streamed_submission_is_cut_off_once_past_the_cap(served: Served, api: ApiClient) -> None:
    target = Target(served, api)
    head = _head(
        "POST",
        target.path,
        {
            "Authorization": f"Bearer {api.token}",
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        },
    )
    status, body, sent = _stream_until_answered(served.port, head, 200 * MiB, chunked=True)
    _assert_too_large(status, body, DEFAULT_LIMIT)
    # Answered while the body was still arriving; the socket buffers hold a few MiB at most.
    assert sent < Limits().submit_body_bytes + 32 * MiB, sent
    target.assert_nothing_kept()


def test_a_submission_just_over_the_limit_is_refused_once_parsed(
    served: Served, api: ApiClient
) -> None:
    """Under the body cap, over the limit: the exact count (code + payloads) refuses it."""
    target = Target(served, api)
    payloads = [sdk_payload(DEFAULT_LIMIT // 3 + 1024)] * 3
    body = json.dumps(target.body(payloads)).encode()
    assert len(body) < Limits().submit_body_bytes  # reaches the route, unlike the cases above
    resp = target.submit_raw(body)
    _assert_too_large(resp.status_code, resp.json(), DEFAULT_LIMIT)
    assert "function code and payloads" in resp.json()["message"]
    target.assert_nothing_kept()


def test_a_9_mib_submission_is_accepted_and_queued(served: Served, api: ApiClient) -> None:
    target = Target(served, api)
    resp = target.submit_raw(json.dumps(target.body([sdk_payload(9 * MiB)])).encode())
    assert resp.status_code == 200, resp.text
    assert _queue_depth(served.amqp_url, target.queue) == 1
    assert target.stored() == (1, 1)


# --- a configured limit --------------------------------------------------------------------


def test_a_configured_limit_is_enforced_at_the_edge_and_once_parsed(
    small: Served, small_api: ApiClient
) -> None:
    target = Target(small, small_api)
    over_cap = target.submit_raw(json.dumps(target.body([sdk_payload(2 * MiB)])).encode())
    _assert_too_large(over_cap.status_code, over_cap.json(), SMALL_LIMIT)
    over_limit = target.submit_raw(
        json.dumps(target.body([sdk_payload(SMALL_LIMIT + 1024)])).encode()
    )
    _assert_too_large(over_limit.status_code, over_limit.json(), SMALL_LIMIT)
    assert "function code and payloads" in over_limit.json()["message"]
    target.assert_nothing_kept()
    ok = target.submit_raw(json.dumps(target.body([sdk_payload(SMALL_LIMIT - 4096)])).encode())
    assert ok.status_code == 200, ok.text
    assert _queue_depth(small.amqp_url, target.queue) == 1


def test_the_limit_counts_bytes_not_characters(small: Served, small_api: ApiClient) -> None:
    # 600,000 two-byte characters: 1.2 MB as published, under 1 MiB as a character count.
    target = Target(small, small_api)
    payload = "10\n00\n" + "\u00e9" * 600_000 + "\n"
    body = json.dumps(target.body([payload]), ensure_ascii=False).encode()
    resp = target.submit_raw(body)
    _assert_too_large(resp.status_code, resp.json(), SMALL_LIMIT)
    target.assert_nothing_kept()


def test_the_limit_is_configured_by_flag_and_checked() -> None:
    cmd = [sys.executable, "-m", "webservice", "serve", "--max-submission-bytes"]
    for bad, why in [("0", "between 1 and"), ("1GiB", "between 1 and"), ("lots", "not a size")]:
        proc = subprocess.run([*cmd, bad], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "--max-submission-bytes" in proc.stderr and why in proc.stderr
