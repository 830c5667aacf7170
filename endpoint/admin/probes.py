"""Connectivity checks for `compute-endpoint diagnose`: can this machine reach the service and
the broker the endpoint uses?

Each check runs on a daemon thread with a hard deadline, so a resolver that never answers or a
peer that accepts and then says nothing costs at most that deadline: a diagnostic command must
never hang. No check sends a credential: the service is asked its public version route, and
the broker only for the first frame of the AMQP handshake (Connection.Start), which it sends
before any login.
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Seconds for each network step, and the hard bound on a whole check.
STEP_TIMEOUT_S = 5.0
CHECK_DEADLINE_S = 15.0
#: The most of an answer read: the version document is small, Connection.Start a few KiB.
MAX_ANSWER = 64 * 1024

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_FRAME_METHOD = 1
_FRAME_END = 0xCE
_CONNECTION_START = (10, 10)


@dataclass
class Check:
    """The outcome of one check, as it goes into the bundle."""

    name: str
    target: str | None
    ok: bool = False
    detail: str = ""
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return f"{self.name}: {verdict} ({self.target or 'no target'}): {self.detail}"


def bounded(name: str, target: str | None, run: Callable[[Check], None], deadline: float) -> Check:
    """Run `run(check)` on a daemon thread; past `deadline` seconds report a timeout.

    A thread left behind is a daemon: it cannot keep the command from exiting."""
    check = Check(name, target)
    done: queue.Queue[BaseException | None] = queue.Queue()

    def work() -> None:
        try:
            run(check)
        except BaseException as e:  # reported, not raised: the bundle records every failure
            done.put(e)
        else:
            done.put(None)

    started = time.monotonic()
    threading.Thread(target=work, name=f"diagnose-{name}", daemon=True).start()
    try:
        error = done.get(timeout=deadline)
    except queue.Empty:
        return Check(name, target, False, f"no answer within {deadline:.0f}s", deadline)
    check.seconds = round(time.monotonic() - started, 3)
    if error is not None:
        check.ok = False
        check.detail = f"{type(error).__name__}: {error}"
    return check


# ---- the web service --------------------------------------------------------------------


def check_service(base_url: str, deadline: float = CHECK_DEADLINE_S) -> Check:
    """GET <service>/v2/version: the route the SDK and the endpoint call before logging in."""
    url = f"{base_url.rstrip('/')}/v2/version"
    return bounded("service", url, lambda c: _get_version(c, url), deadline)


def _get_version(check: Check, url: str) -> None:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        check.detail = "not an http(s) URL"
        return
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=STEP_TIMEOUT_S) as resp:
            body = resp.read(MAX_ANSWER)
            status = resp.status
    except urllib.error.HTTPError as e:
        e.close()
        check.detail = f"HTTP {e.code} {e.reason}"
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        check.detail = f"cannot connect: {reason}"
        return
    try:
        doc = json.loads(body)
    except ValueError:
        check.detail = f"HTTP {status}, but not a JSON answer"
        return
    check.ok = status == 200 and isinstance(doc, dict)
    if isinstance(doc, dict):
        check.info = {k: doc[k] for k in ("api", "version", "min_ep_version") if k in doc}
    check.detail = f"HTTP {status}; version {check.info.get('version', '?')}"


# ---- the broker ---------------------------------------------------------------------------


def check_broker(address: str, deadline: float = CHECK_DEADLINE_S) -> Check:
    """TCP connect (and TLS for amqps) to `scheme://host:port`, then the AMQP 0-9-1 protocol
    header; the broker must answer with Connection.Start."""
    return bounded("broker", address, lambda c: _handshake(c, address), deadline)


def _handshake(check: Check, address: str) -> None:
    parts = urllib.parse.urlsplit(address)
    tls = parts.scheme == "amqps"
    host, port = parts.hostname, parts.port or (5671 if tls else 5672)
    if parts.scheme not in ("amqp", "amqps") or not host:
        check.detail = "not an amqp(s)://host:port address"
        return
    try:
        sock = socket.create_connection((host, port), timeout=STEP_TIMEOUT_S)
    except OSError as e:
        check.detail = f"TCP connect failed: {e}"
        return
    try:
        if tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        sock.settimeout(STEP_TIMEOUT_S)
        sock.sendall(AMQP_HEADER)
        info = _connection_start(sock)
    except (OSError, ValueError) as e:
        check.detail = f"connected, but the AMQP handshake failed: {e}"
        return
    finally:
        sock.close()
    check.ok = True
    check.info = info
    product = " ".join(str(info[k]) for k in ("product", "version") if k in info)
    check.detail = f"AMQP {info['amqp']} handshake answered" + (f" by {product}" if product else "")


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ValueError(f"the peer closed the connection after {len(out)} of {n} bytes")
        out += chunk
    return out


def _connection_start(sock: socket.socket) -> dict[str, Any]:
    header = _read_exact(sock, 7)
    if header.startswith(b"AMQP"):
        raise ValueError(f"the broker refused protocol 0-9-1 (it offers {header[4:].hex()})")
    kind, _channel, size = struct.unpack("!BHI", header)
    if kind != _FRAME_METHOD or size > MAX_ANSWER:
        raise ValueError(f"not an AMQP method frame (type {kind}, size {size})")
    payload = _read_exact(sock, size + 1)
    if payload[-1] != _FRAME_END:
        raise ValueError("the frame has no frame-end octet")
    class_id, method_id, major, minor = struct.unpack("!HHBB", payload[:6])
    if (class_id, method_id) != _CONNECTION_START:
        raise ValueError(f"expected Connection.Start, got method {class_id}.{method_id}")
    info: dict[str, Any] = {"amqp": f"{major}-{minor}"}
    info.update(_server_properties(payload[6:-1]))
    return info


def _server_properties(data: bytes) -> dict[str, str]:
    """`product` and `version` from the server-properties table (nested tables and booleans
    are skipped; parsing stops at a field of any other type)."""
    out: dict[str, str] = {}
    if len(data) < 4:
        return out
    (length,) = struct.unpack("!I", data[:4])
    table, pos = data[4 : 4 + length], 0
    while pos < len(table):
        key_len = table[pos]
        key = table[pos + 1 : pos + 1 + key_len].decode(errors="replace")
        pos += 1 + key_len
        kind = table[pos : pos + 1]
        if kind == b"t":
            pos += 2
            continue
        if kind not in (b"S", b"F") or pos + 5 > len(table):
            break
        (value_len,) = struct.unpack("!I", table[pos + 1 : pos + 5])
        value = table[pos + 5 : pos + 5 + value_len]
        pos += 5 + value_len
        if kind == b"S" and key in ("product", "version", "cluster_name"):
            out[key] = value.decode(errors="replace")[:200]
    return out
