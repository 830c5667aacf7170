"""An unprivileged local user probing a broker: what can it log in with, list or read?

The probe runs as a real other uid (`nobody`, through `setpriv`), never as the test's own
user, with the project's Python (pika). It tries `guest/guest`, then every credential it can
find (on AMQP, and on the management API when its port is given): AMQP URLs and user/password
pairs in any file it can read, and every process's command line (`/proc/*/cmdline` is readable
by all). The test (root) names the paths; the probe reports which of them it could list or
read. Root is needed to switch uid: the tests fail without it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The attacker: `nobody`, in no group of ours.
ATTACKER_UID = 65534
ATTACKER_GID = 65534

PROBE = r"""
import json, os, re, sys
import pika

args = json.loads(sys.argv[1])
PAIRS = [
    re.compile(r"amqps?://([^:/@\s]+):([^@\s]+)@"),
    re.compile(r'"(?:name|username|user)"\s*:\s*"([^"]+)"[^}]*?"(?:password|pass)"\s*:\s*"([^"]+)"'),
    re.compile(r"default_user\s*=\s*(\S+)\s+(?:.*\n)*?default_pass\s*=\s*(\S+)"),
    re.compile(r"username=(\S+)\s+password=(\S+)"),
]


def candidates(text):
    for rx in PAIRS:
        for user, password in rx.findall(text):
            yield user, password


def connects(user, password):
    from urllib.parse import unquote
    params = pika.ConnectionParameters(
        "127.0.0.1", args["port"], "/", pika.PlainCredentials(unquote(user), unquote(password)),
        connection_attempts=1, socket_timeout=5, blocked_connection_timeout=5,
    )
    try:
        conn = pika.BlockingConnection(params)
    except Exception:
        return False
    conn.close()
    return True


listable = []
for d in args["dirs"]:
    try:
        os.listdir(d)
        listable.append(d)
    except OSError:
        pass
readable, found = [], {("guest", "guest")}
for f in args["files"]:
    try:
        with open(f, "rb") as fh:
            text = fh.read().decode(errors="replace")
    except OSError:
        continue
    readable.append(f)
    found.update(candidates(text))
for pid in os.listdir("/proc"):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            found.update(candidates(fh.read().replace(b"\0", b" ").decode(errors="replace")))
    except OSError:
        pass
def manages(user, password):
    # The management API (HTTP basic auth): what the web service makes accounts through.
    import base64, urllib.error, urllib.request
    from urllib.parse import unquote
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{args['admin_port']}/api/whoami",
        headers={"Authorization": f"Basic {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


connected = sorted(user for user, password in found if connects(user, password))
if args.get("admin_port"):
    connected += sorted(f"api:{u}" for u, p in found if manages(u, p))
print(json.dumps({"listable": listable, "readable": readable, "connected": connected}))
"""


@dataclass(frozen=True)
class Findings:
    """What the attacker got: users it logged in as, dirs it listed, files it read."""

    connected: list[str]
    listable: list[str]
    readable: list[str]


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests switch to an unprivileged uid with setpriv: run them as root")


def as_attacker(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run argv as the attacker: another uid and gid, no supplementary groups."""
    require_root()
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={ATTACKER_UID}",
            f"--regid={ATTACKER_GID}",
            "--clear-groups",
            "--",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"},
        cwd="/",
    )


def tree(root: Path) -> tuple[list[Path], list[Path]]:
    """Every directory (root included) and every file under root, as its owner sees them."""
    dirs, files = [root], []
    for here, subdirs, names in os.walk(root):
        dirs += [Path(here, d) for d in subdirs]
        files += [Path(here, n) for n in names if not Path(here, n).is_symlink()]
    return dirs, files


def loose_modes(root: Path) -> dict[str, str]:
    """Paths under root (root included) that anyone but their owner may use."""
    dirs, files = tree(root)
    found = {}
    for path in dirs + files:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            found[str(path)] = oct(mode)
    return found


def probe(
    port: int, dirs: list[Path], files: list[Path], admin_port: int | None = None
) -> Findings:
    """The attacker tries the broker on `port` (and its management API on `admin_port`: a
    login there is reported as `api:USER`) and every one of `dirs` and `files`."""
    doc = {
        "port": port,
        "admin_port": admin_port,
        "dirs": [str(d) for d in dirs],
        "files": [str(f) for f in files],
    }
    proc = as_attacker(sys.executable, "-c", PROBE, json.dumps(doc))
    assert proc.returncode == 0, f"the probe failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return Findings(out["connected"], out["listable"], out["readable"])
