"""Issue 13, limits at the edge and all or nothing, against `compute-webservice serve` itself.

The service runs as its own process (the real command, with its uvicorn settings), so its RSS,
its log and its descriptor limit are its own. Every wait is for a condition, with a generous
deadline; nothing asserts a duration.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pika
import psutil
import pytest

from devstack.testing import ApiClient, fetch_token
from webservice.broker import PrivateRabbit, free_port
from webservice.store import Store
from webservice.store.credentials import MIN_SECRET_LENGTH

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
CODE = "12\n01\ngASVAA==\n"
PAYLOAD = "10\n00\ngAQpLg==\n"


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    db: str
    log: Path
    amqp_url: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def identity(self) -> ApiClient:
        store = Store.open(self.db)
        try:
            cid, secret = store.credentials.create_client("limits")
        finally:
            store.close()
        return ApiClient(self.url, cid, fetch_token(self.url, cid, secret))

    def create_client(self) -> tuple[str, str]:
        store = Store.open(self.db)
        try:
            return store.credentials.create_client("limits")
        finally:
            store.close()


def _wait_for(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/version", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _serve(
    rabbit: PrivateRabbit, tmp: Path, nofile: int | None = None, **env: str
) -> Iterator[Served]:
    port = free_port()
    db = str(tmp / "ws.db")
    log = tmp / "serve.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COMPUTE_WEBSERVICE_")}
    environ.update({f"COMPUTE_WEBSERVICE_{k}": v for k, v in env.items()})
    # Secrets in the environment, never on a command line (`ps` shows argv to everyone).
    environ["COMPUTE_WEBSERVICE_AMQP_URL"] = rabbit.url
    environ["COMPUTE_WEBSERVICE_AMQP_ADMIN_URL"] = rabbit.admin_url

    def limit_descriptors() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    cmd = [sys.executable, "-m", "webservice", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--db", db]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit_descriptors, env=environ
        )
    served = Served(proc, port, db, log, rabbit.url)
    try:
        _wait_for(lambda: _up(served.url) or proc.poll() is not None, "the service", 120)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.fixture(scope="module")
def served(rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(rabbit, tmp_path_factory.mktemp("ws-limits"), HEADER_TIMEOUT="2")


@pytest.fixture(scope="module")
def api(served: Served) -> Iterator[ApiClient]:
    with served.identity() as client:
        yield client


# --- raw HTTP ---------------------------------------------------------------------------


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(sock: socket.socket, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of the response on `sock` (read until the body is complete)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, json.loads(body) if body else {}


def _stream_until_answered(
    port: int, head: bytes, total: int, chunked: bool = False
) -> tuple[int, dict[str, Any], int]:
    """Send `head`, then body bytes until the service answers: (status, body, bytes sent)."""
    block = b"x" * MiB
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        try:
            while sent < total:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                piece = block[: min(MiB, total - sent)]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked and sent >= total:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, body = _read_response(sock)
    return status, body, sent


def _submit_path(api: ApiClient) -> str:
    ep = api.register_endpoint()["endpoint_id"]
    return f"/v3/endpoints/{ep}/submit"


# --- finding 3: body limit, authentication first -------------------------------------------


def test_an_anonymous_500_mb_request_gets_401_without_the_service_growing(
    served: Served, api: ApiClient
) -> None:
    path = _submit_path(api)
    before = served.rss()
    total = 500 * MiB
    head = _head("POST", path, {"Content-Type": "application/json", "Content-Length": str(total)})
    status, body, sent = _stream_until_answered(served.port, head, total)
    after = served.rss()
    print(
        f"anonymous 500 MB: answered {status} after {sent / MiB:.0f} MiB sent;"
        f" RSS {before / MiB:.0f} -> {after / MiB:.0f} MiB"
    )
    assert status == 401, body
    assert body["code"] == "UNAUTHORIZED"
    assert after - before < 100 * MiB


def test_a_declared_length_over_the_limit_is_413_before_any_of_it_is_read(
    served: Served, api: ApiClient
) -> None:
    path = "/v3/functions"  # submit has its own cap: test_webservice_submission_limit
    head = _head(
        "POST",
        path,
        {
            "Authorization": f"Bearer {api.token}",
            "Content-Type": "application/json",
            "Content-Length": str(140 * MiB),
        },
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as sock:
        sock.sendall(head)  # and not one byte of the body
        status, body = _read_response(sock)
    assert status == 413, body
    assert body["code"] == "REQUEST_TOO_LARGE"
    assert "bytes" in body["message"]


def test_a_chunked_body_is_cut_off_at_the_limit_with_413(served: Served, api: ApiClient) -> None:
    path = "/v3/functions"  # submit has its own cap: test_webservice_submission_limit
    head = _head(
        "POST",
        path,
        {
            "Authorization": f"Bearer {api.token}",
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        },
    )
    before = served.rss()
    status, body, sent = _stream_until_answered(served.port, head, 200 * MiB, chunked=True)
    print(
        f"chunked 200 MiB: answered {status} after {sent / MiB:.0f} MiB sent;"
        f" RSS {before / MiB:.0f} -> {served.rss() / MiB:.0f} MiB"
    )
    assert status == 413, body
    assert body["code"] == "REQUEST_TOO_LARGE"


def test_a_submission_over_10_mib_is_413_task_payload_too_large(api: ApiClient) -> None:
    ep = api.register_endpoint()["endpoint_id"]
    fid = api.register_function(CODE)
    payloads = ["x" * (4 * MiB)] * 3  # 12 MiB of payload: under the body limit, over 10 MiB
    resp = api.submit(ep, {fid: payloads})
    assert resp.status_code == 413, resp.text
    assert resp.json()["code"] == "TASK_PAYLOAD_TOO_LARGE"
    # The function's code counts once per task.
    big = api.register_function("x" * (3 * MiB))
    resp = api.submit(ep, {big: [PAYLOAD] * 4})
    assert resp.status_code == 413, resp.text
    assert resp.json()["code"] == "TASK_PAYLOAD_TOO_LARGE"


# --- finding 4: header-borne fields ------------------------------------------------------


def _queue_depth(amqp_url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


@pytest.mark.parametrize(
    "field",
    [
        {"resource_specification": {"x": "y" * (200 * 1024)}},
        {"resource_specification": {f"k{i}": i for i in range(20_000)}},
        {"result_serializers": ["s" * 1000] * 200},
        {"user_endpoint_config": {"x": "y" * (200 * 1024)}},
    ],
    ids=["spec-string", "spec-keys", "serializers", "user-endpoint-config"],
)
def test_an_oversized_header_field_is_refused_and_nothing_is_published(
    served: Served, api: ApiClient, field: dict[str, Any]
) -> None:
    reg = api.register_endpoint()
    ep, tasks = reg["endpoint_id"], reg["task_queue_info"]["queue"]
    fid = api.register_function(CODE)
    resp = api.submit(ep, {fid: [PAYLOAD, PAYLOAD]}, **field)
    assert resp.status_code in (413, 422), resp.text
    assert resp.json()["code"] in ("FIELD_TOO_LARGE", "VALIDATION_ERROR")
    assert _queue_depth(served.amqp_url, tasks) == 0
    # The service's AMQP connection survived: the next submit is published at once.
    ok = api.submit(ep, {fid: [PAYLOAD]})
    assert ok.status_code == 200, ok.text
    assert _queue_depth(served.amqp_url, tasks) == 1


# --- finding 8: all or nothing, 4xx never 500 --------------------------------------------


def test_a_batch_with_one_unencodable_payload_publishes_and_stores_nothing(
    served: Served, api: ApiClient
) -> None:
    reg = api.register_endpoint()
    ep, tasks = reg["endpoint_id"], reg["task_queue_info"]["queue"]
    fid = api.register_function(CODE)
    tg = str(uuid.uuid4())
    good = json.dumps(PAYLOAD)
    body = (
        f'{{"tasks": {{"{fid}": [{good}, {good}, "x\\ud800y"]}},'
        f' "task_group_id": "{tg}", "create_queue": true}}'
    )
    resp = api.post(
        f"/v3/endpoints/{ep}/submit", content=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 422, resp.text
    assert _queue_depth(served.amqp_url, tasks) == 0
    # Nothing stored: the group the failed submit would have created does not exist.
    assert api.get(f"/v2/taskgroup/{tg}").status_code == 404


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("functions", '{"function_name": "f\\udc80", "function_code": "c"}'),
        ("functions", '{"function_name": "f", "function_code": "c", "meta": {"\\ud800": 1}}'),
        ("endpoints", '{"endpoint_name": "e", "metadata": %s}' % ('{"a":' * 900 + "1" + "}" * 900)),
        ("endpoints", '{"endpoint_name": "e", "metadata": {"m": %s}}' % ("[" * 900 + "]" * 900)),
        ("endpoints", '{"endpoint_name": "e\\ud800"}'),
        ("submit", '{"tasks": {}, "resource_specification": {"a": "\\udfff"}}'),
        ("submit", '{"tasks": {}, "user_endpoint_config": %s}' % ('{"a":' * 900 + "1" + "}" * 900)),
        ("submit", '{"tasks": {}, "result_serializers": ["\\ud800"]}'),
    ],
)
def test_bad_input_is_4xx_never_500(api: ApiClient, route: str, body: str) -> None:
    path = {"functions": "/v3/functions", "endpoints": "/v3/endpoints"}.get(route)
    if path is None:
        path = _submit_path(api)
    resp = api.post(path, content=body, headers={"Content-Type": "application/json"})
    assert 400 <= resp.status_code < 500, resp.text


# --- finding 9: task ids, token throttling, secrets --------------------------------------


def test_task_ids_are_uuids_and_oversized_ones_are_refused(api: ApiClient) -> None:
    ep = api.register_endpoint()["endpoint_id"]
    fid = api.register_function(CODE)
    resp = api.submit(ep, {fid: [PAYLOAD] * 3})
    assert resp.status_code == 200, resp.text
    for tid in resp.json()["tasks"][fid]:
        assert str(uuid.UUID(tid)) == tid
    long_id = "a" * 300
    assert 400 <= api.get(f"/v2/tasks/{long_id}").status_code < 500
    batch = api.post("/v2/batch_status", json={"task_ids": [long_id, "not-a-uuid"]})
    assert 400 <= batch.status_code < 500 or batch.json()


def _token_status(served: Served, cid: str, secret: str) -> httpx.Response:
    return httpx.post(
        f"{served.url}/v2/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "openid"},
        auth=(cid, secret),
    )


def test_guessing_a_secret_is_throttled_but_the_owner_is_not(served: Served) -> None:
    victim, _ = served.create_client()
    codes = [_token_status(served, victim, f"wrong-guess-{i:020d}").status_code for i in range(30)]
    print("wrong-secret answers:", codes)
    assert codes[0] == 401
    assert 429 in codes
    refused = _token_status(served, victim, f"wrong-guess-{31:020d}")
    if refused.status_code == 429:
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"] == "slow_down"
    # Another client, which knows its secret, is never slowed: many tokens in a row.
    owner, owner_secret = served.create_client()
    assert [_token_status(served, owner, owner_secret).status_code for _ in range(30)] == [200] * 30


def test_a_short_client_secret_is_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "ws.db")
    store = Store.open(db)
    try:
        with pytest.raises(ValueError, match="at least"):
            store.credentials.create_client("short", secret="x" * (MIN_SECRET_LENGTH - 1))
        _, secret = store.credentials.create_client("ok")
        assert len(secret) >= MIN_SECRET_LENGTH
    finally:
        store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPUTE_WEBSERVICE_")}
    cli = [sys.executable, "-m", "webservice", "create-client", "--db", db]
    out = subprocess.run(
        [*cli, "--client-secret", "hunter2"], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 2, out.stdout
    assert "at least" in out.stderr


# --- finding 5: slow clients, descriptors ------------------------------------------------


def test_a_client_that_never_finishes_its_headers_is_disconnected(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as sock:
        sock.sendall(b"POST /v3/functions HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        sock.settimeout(60)
        with contextlib.suppress(ConnectionResetError):  # closed, with or without a reset
            assert sock.recv(1024) == b""


def test_a_body_that_stops_arriving_gets_408(served: Served, api: ApiClient) -> None:
    head = _head(
        "POST",
        "/v3/functions",
        {
            "Authorization": f"Bearer {api.token}",
            "Content-Type": "application/json",
            "Content-Length": "1000",
        },
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=120) as sock:
        sock.sendall(head + b'{"function_name": ')
        status, body = _read_response(sock, timeout=120)
    assert status == 408, body


@pytest.mark.timeout(600)
def test_out_of_descriptors_the_service_stays_responsive_with_a_small_log(
    rabbit: PrivateRabbit, tmp_path: Path
) -> None:
    for svc in _serve(rabbit, tmp_path, nofile=1024, HEADER_TIMEOUT="30"):
        socks: list[socket.socket] = []
        try:
            for _ in range(1100):
                try:
                    socks.append(socket.create_connection(("127.0.0.1", svc.port), timeout=10))
                except OSError:
                    break
            # Held open, sending nothing: fresh clients still get answers.
            _wait_for(
                functools.partial(_up, svc.url), "an answer while 1,100 connections idle", 120
            )
            answered = sum(_up(svc.url) for _ in range(5))
            size = svc.log.stat().st_size
            print(f"{len(socks)} idle connections; 5 probes answered {answered}; log {size} B")
            assert answered >= 4
            assert size < MiB, svc.log.read_text()[-2000:]
        finally:
            for s in socks:
                s.close()


# --- soak: oversized bodies and slow clients, mixed ------------------------------------------


@pytest.mark.timeout(600)
def test_soak_of_oversized_bodies_and_slow_clients_has_no_5xx_and_bounded_rss(
    served: Served, api: ApiClient
) -> None:
    path = _submit_path(api)
    fid = api.register_function(CODE)
    auth = {"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"}
    statuses: dict[int, int] = {}
    base_rss, base_log = served.rss(), served.log.stat().st_size
    slow: list[socket.socket] = []
    for round_ in range(10):
        answers = [
            _stream_until_answered(
                served.port,
                _head(
                    "POST",
                    path,
                    {"Content-Type": "application/json", "Content-Length": str(64 * MiB)},
                ),
                64 * MiB,
            )[0],
            _stream_until_answered(
                served.port,
                _head("POST", path, {**auth, "Transfer-Encoding": "chunked"}),
                32 * MiB,
                chunked=True,
            )[0],
            api.submit(path.split("/")[3], {fid: ["y" * (5 * MiB)] * 3}).status_code,
            api.submit(
                path.split("/")[3], {fid: [PAYLOAD]}, resource_specification={"x": "z" * 300_000}
            ).status_code,
            api.post(path, content=b"{" * 5000, headers=auth).status_code,
            api.submit(path.split("/")[3], {fid: [PAYLOAD]}).status_code,
        ]
        for status in answers:
            statuses[status] = statuses.get(status, 0) + 1
        for _ in range(50):  # slow clients: half a request line, then nothing
            s = socket.create_connection(("127.0.0.1", served.port), timeout=10)
            s.sendall(b"GET /v2/vers")
            slow.append(s)
        print(f"round {round_}: RSS {served.rss() / MiB:.0f} MiB, answers {answers}")
    for s in slow:
        s.close()
    rss, log_bytes = served.rss(), served.log.stat().st_size - base_log
    print(
        f"soak: statuses {statuses}; RSS {base_rss / MiB:.0f} -> {rss / MiB:.0f} MiB;"
        f" log +{log_bytes} B"
    )
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses.get(200) == 10
    assert rss - base_rss < 300 * MiB
    assert log_bytes < MiB
