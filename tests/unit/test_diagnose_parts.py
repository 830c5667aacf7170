"""The parts of `compute-endpoint diagnose` that need no endpoint: redaction, the link-refusing
reader, and the connectivity checks against loopback sockets that misbehave."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoint.admin import probes
from endpoint.host.nofollow import list_under, read_under
from endpoint.host.redact import MASK, public_address, redact_text, secret_values


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("url: amqps://ep.1:s3cretpw@broker:5671/vhost", "s3cretpw"),
        ("connecting to amqp://user:pa%40ss@localhost/ now", "pa%40ss"),
        ("password: hunter2 with spaces", "hunter2 with spaces"),
        ('client_secret: "quoted value"', "quoted value"),
        ("export GLOBUS_COMPUTE_CLIENT_SECRET=abc123xyz; echo ok", "abc123xyz"),
        ("{'access_token': 'at-1234', 'scope': 'x'}", "at-1234"),
        ('{"refresh_token": "rt-5678"}', "rt-5678"),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
        ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("  # api_key = k-0000-1111", "k-0000-1111"),
        ("PGPASSWORD=pw-9876 psql", "pw-9876"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nabc\n-----END RSA PRIVATE KEY-----", "MIIEow"),
    ],
)
def test_patterns_mask_secrets_and_keep_the_line(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out and MASK in out


def test_innocent_text_is_kept() -> None:
    text = (
        "engine:\n  type: GlobusComputeEngine\n  max_workers_per_node: 2\nurl: http://h:5000/v2\n"
        "KeyError: 'endpoint_id'\nTokenExpiredWarning: refresh\n"
    )
    assert redact_text(text) == text


def test_known_values_are_masked_anywhere() -> None:
    out = redact_text("client abc uses s3cr3t-value in plain words", ["s3cr3t-value", "ab"])
    assert out == f"client abc uses {MASK} in plain words"  # too short a value is left


def test_secret_values_of_a_document() -> None:
    doc = {
        "engine": {"provider": {"worker_init": "export X=1 amqp://u:urlpw@h/"}},
        "credentials": {"user": "u", "nested": ["n1"]},
        "token": "t1",
    }
    assert set(secret_values(doc)) >= {"urlpw", "u", "n1", "t1"}


def test_public_address_drops_userinfo_and_path() -> None:
    assert public_address("amqps://ep:pw@broker.example:5671/vh") == "amqps://broker.example:5671"
    assert public_address("amqp://ep:pw@[::1]/") == "amqp://[::1]"
    assert public_address("not a url") is None


def test_reader_refuses_links_anywhere_below_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("outside")
    root = tmp_path / "ep"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.log").write_text("0123456789")
    (root / "link").symlink_to(outside / "f")
    (root / "dirlink").symlink_to(outside)
    os.mkfifo(root / "fifo")
    assert read_under(root, "sub/ok.log", 4, tail=True) == b"6789"
    assert read_under(root, "sub/ok.log", 4) == b"0123"
    for rel in ("link", "dirlink/f", "fifo", "sub/../link"):
        with pytest.raises(OSError):
            read_under(root, rel, 100)
    kinds = {str(e.rel): e.kind for e in list_under(root)}
    assert kinds == {
        "dirlink": "symlink",
        "fifo": "other",
        "link": "symlink",
        "sub": "dir",
        "sub/ok.log": "file",
    }


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(5)
    for s in held:
        s.close()
    srv.close()


def test_a_silent_peer_cannot_hang_a_check(silent_server: int) -> None:
    broker = probes.check_broker(f"amqp://127.0.0.1:{silent_server}", deadline=1.0)
    assert not broker.ok and "no answer within 1s" in broker.detail
    svc = probes.check_service(f"http://127.0.0.1:{silent_server}", deadline=1.0)
    assert not svc.ok and "no answer within 1s" in svc.detail


def test_a_peer_that_is_not_a_broker_fails_the_handshake() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def answer() -> None:
        conn, _ = srv.accept()
        conn.recv(8)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    check = probes.check_broker(f"amqp://127.0.0.1:{srv.getsockname()[1]}")
    t.join(10)
    srv.close()
    assert not check.ok and "AMQP handshake failed" in check.detail
