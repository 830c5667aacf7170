"""A private RabbitMQ node on loopback, for the embedded default stack, tests and benchmarks.

Every path and port lives under one state directory, so several nodes never collide with each
other or with a system-wide RabbitMQ (recipes: a private RabbitMQ).

No default credentials (issue 13, finding 2): on a shared machine every local user can reach a
loopback port, so the node has no `guest`. Its one user, an administrator with a random name and
password (`secrets`), is created at first start and kept in `credentials.json`; later starts
reuse it, so the node's durable queues stay reachable. RabbitMQ imports it from
`definitions.json` at every boot (a node that imports definitions creates no default user), and
an older state directory that still has `guest` loses it at its next start. The state directory
is 0700 and everything in it owner-only (the node runs under umask 077): the Erlang cookie, the
message store (task arguments), the logs, the credentials. Only `url` carries the password; it is
never logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

RABBIT_BIN = Path(os.environ.get("RABBITMQ_BIN_DIR", "/usr/lib/rabbitmq/bin"))
CREDENTIALS_FILE = "credentials.json"
DEFINITIONS_FILE = "definitions.json"
#: Every file the node or we create in the state directory is owner-only.
UMASK = 0o077


class BrokerStartError(RuntimeError):
    """The private RabbitMQ did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class BrokerCredentials:
    """The node's administrator; the password stays out of reprs (and so out of logs)."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def generate(cls) -> BrokerCredentials:
        return cls(f"admin-{secrets.token_hex(4)}", secrets.token_hex(24))


def _write_private(path: Path, text: str) -> None:
    """Write `path` 0600, atomically; never through a planted symlink."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def _secure_state_dir(state_dir: Path) -> None:
    """Make `state_dir` ours and owner-only, including what an earlier version left in it."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = state_dir.stat()
    if st.st_uid != os.geteuid():
        raise BrokerStartError(f"{state_dir} belongs to uid {st.st_uid}, not to this user")
    state_dir.chmod(0o700)
    for root, dirs, files in os.walk(state_dir):
        for name in dirs + files:
            path = Path(root, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) or not stat.S_IMODE(mode) & 0o077:
                continue
            path.chmod(stat.S_IMODE(mode) & 0o700)


def _load_credentials(path: Path) -> BrokerCredentials:
    """The node's administrator: kept from its first start, or created now."""
    if path.exists():
        try:
            doc = json.loads(path.read_text())
            return BrokerCredentials(str(doc["username"]), str(doc["password"]))
        except (ValueError, KeyError, TypeError) as e:
            raise BrokerStartError(f"unreadable broker credentials in {path}: {e!r}") from None
    creds = BrokerCredentials.generate()
    _write_private(path, json.dumps({"username": creds.username, "password": creds.password}))
    return creds


def _definitions(creds: BrokerCredentials) -> str:
    """What the node imports at every boot: its administrator, and nothing called guest."""
    user = creds.username
    return json.dumps(
        {
            "users": [{"name": user, "password": creds.password, "tags": "administrator"}],
            "vhosts": [{"name": "/"}],
            "permissions": [
                {"user": user, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
            ],
        }
    )


class PrivateRabbit:
    """Start/stop one RabbitMQ node whose state lives in `state_dir`."""

    def __init__(self, state_dir: str | Path | None = None, port: int | None = None) -> None:
        self._owns_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="rabbit-"))
        _secure_state_dir(self.state_dir)
        self.credentials = _load_credentials(self.state_dir / CREDENTIALS_FILE)
        self.port = port or free_port()
        # The management API is how the service gives each endpoint and client its own broker
        # account (`broker_admin.py`); loopback only, and only the administrator may use it.
        self.admin_port = free_port()
        self.node = f"gc{self.port}@localhost"
        self._proc: subprocess.Popen[bytes] | None = None
        self._env = self._build_env()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        user = quote(self.credentials.username, safe="")
        password = quote(self.credentials.password, safe="")
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/%2F"

    @property
    def admin_url(self) -> str:
        """The management API, as the administrator (`broker_admin.BrokerAdmin`)."""
        user = quote(self.credentials.username, safe="")
        password = quote(self.credentials.password, safe="")
        return f"http://{user}:{password}@127.0.0.1:{self.admin_port}/"

    def _build_env(self) -> dict[str, str]:
        d = self.state_dir
        _write_private(d / "rabbitmq-env.conf", "")
        _write_private(d / "enabled_plugins", "[rabbitmq_management].\n")
        _write_private(d / DEFINITIONS_FILE, _definitions(self.credentials))
        _write_private(
            d / "rabbitmq.conf",
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"load_definitions = {d / DEFINITIONS_FILE}\n"
            # A long task must never make the broker drop our channel (reliability case 7).
            "consumer_timeout = 86400000\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.admin_port}\n"
            # Users and permissions only: no statistics collection, no UI traffic to pay for.
            "management_agent.disable_metrics_collector = true\n",
        )
        dist = free_port()
        epmd = free_port()
        env = dict(os.environ)
        env.update(
            HOME=str(d),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(dist),
            RABBITMQ_CTL_DIST_PORT_MIN=str(dist + 1),
            RABBITMQ_CTL_DIST_PORT_MAX=str(dist + 10),
            ERL_EPMD_PORT=str(epmd),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbit.pid"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(d / "plugins-expand"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-q", *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            umask=UMASK,
        )

    def start(self, timeout: float = 90) -> None:
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            raise BrokerStartError(
                f"{RABBIT_BIN}/rabbitmq-server not found: install Debian's rabbitmq-server"
            )
        # An older state directory may still hold `guest`; a fresh one never gets it.
        fresh = not (self.state_dir / "mnesia" / self.node).exists()
        out = os.open(
            self.state_dir / "server.out",
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
            0o600,
        )
        # The child gets its own copy of the descriptor: ours is closed once it has started.
        with os.fdopen(out, "ab") as logf:
            self._proc = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")],
                env=self._env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=UMASK,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerStartError(f"rabbitmq-server exited; see {self.state_dir}/server.out")
            pid_file = self.state_dir / "rabbit.pid"
            if pid_file.exists():
                res = self.ctl("wait", "--timeout", "60", str(pid_file), timeout=70)
                if res.returncode == 0 and self._port_open():
                    if not fresh:
                        self._delete_guest()
                    log.info("private RabbitMQ up on port %s", self.port)
                    return
            time.sleep(0.3)
        self.stop()
        raise BrokerStartError(f"RabbitMQ not ready after {timeout}s")

    def _delete_guest(self) -> None:
        res = self.ctl("delete_user", "guest")
        if res.returncode != 0 and "does not exist" not in res.stdout + res.stderr:
            self.stop()
            raise BrokerStartError(f"could not delete the guest user: {res.stderr.strip()}")
        if res.returncode == 0:
            log.warning("deleted the guest user an earlier version left in %s", self.state_dir)

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop_app(self) -> None:
        """Stop the broker application but keep the node (a broker outage)."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")

    def stop(self) -> None:
        if self._proc is None:
            return
        self.ctl("stop", timeout=30) if self._proc.poll() is None else None
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            # A stop once hung for minutes (recipes): kill our own process group.
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        subprocess.run([epmd, "-kill"], env=self._env, capture_output=True, check=False)
        self._proc = None
        if self._owns_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> PrivateRabbit:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
