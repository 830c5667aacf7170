"""A private RabbitMQ node on loopback, for the embedded default stack, tests and benchmarks.

Every path and port lives under one state directory, so several nodes never collide with each
other or with a system-wide RabbitMQ (recipes: a private RabbitMQ).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

RABBIT_BIN = Path(os.environ.get("RABBITMQ_BIN_DIR", "/usr/lib/rabbitmq/bin"))


class BrokerStartError(RuntimeError):
    """The private RabbitMQ did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRabbit:
    """Start/stop one RabbitMQ node whose state lives in `state_dir`."""

    def __init__(self, state_dir: str | Path | None = None, port: int | None = None) -> None:
        self._owns_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="rabbit-"))
        self.port = port or free_port()
        self.node = f"gc{self.port}@localhost"
        self._proc: subprocess.Popen[bytes] | None = None
        self._env = self._build_env()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _build_env(self) -> dict[str, str]:
        d = self.state_dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            # A long task must never make the broker drop our channel (reliability case 7).
            "consumer_timeout = 86400000\n"
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
        )

    def start(self, timeout: float = 90) -> None:
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            raise BrokerStartError(
                f"{RABBIT_BIN}/rabbitmq-server not found: install Debian's rabbitmq-server"
            )
        # The child gets its own copy of the descriptor: ours is closed once it has started.
        with open(self.state_dir / "server.out", "ab") as logf:
            self._proc = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")],
                env=self._env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerStartError(f"rabbitmq-server exited; see {self.state_dir}/server.out")
            pid_file = self.state_dir / "rabbit.pid"
            if pid_file.exists():
                res = self.ctl("wait", "--timeout", "60", str(pid_file), timeout=70)
                if res.returncode == 0 and self._port_open():
                    log.info("private RabbitMQ up on port %s", self.port)
                    return
            time.sleep(0.3)
        self.stop()
        raise BrokerStartError(f"RabbitMQ not ready after {timeout}s")

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
