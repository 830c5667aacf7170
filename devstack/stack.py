"""The embedded default stack on one machine: a private RabbitMQ, the web service and one of
our endpoints, each a real process. Used by `make demo`, the e2e tests and the benchmarks.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from devstack.official_url import official_url_env
from webservice.broker import PrivateRabbit, free_port

log = logging.getLogger(__name__)

#: The official SDK's "local" environment is fixed at this address.
SDK_LOCAL_PORT = 5000


def local_gce_engine(workers: int = 2, min_blocks: int = 0) -> str:
    """The body of an `engine:` block (indented, without the key): a GlobusComputeEngine with
    one LocalProvider block on loopback, as the tests and benchmarks run it."""
    return (
        "  type: GlobusComputeEngine\n"
        f"  max_workers_per_node: {workers}\n"
        "  address: 127.0.0.1\n"
        "  provider:\n"
        "    type: LocalProvider\n"
        "    init_blocks: 1\n"
        f"    min_blocks: {min_blocks}\n"
        "    max_blocks: 1\n"
    )


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


class Stack:
    def __init__(self, root: Path | None = None, port: int = SDK_LOCAL_PORT) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="compute-stack-"))
        self.port = port
        self.rabbit = PrivateRabbit(self.root / "rabbit")
        self.db = self.root / "webservice.db"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.client_id = ""
        self.client_secret = ""
        self._api_token = ""

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    # ---- the web service ------------------------------------------------------------------
    def start_service(self) -> None:
        if not self.rabbit.running:
            self.rabbit.start()
        self._spawn(
            "webservice",
            [
                _bin("compute-webservice"),
                "serve",
                "--port",
                str(self.port),
                "--db",
                str(self.db),
            ],
            # In the environment, not on the command line: `ps` shows argv to every user.
            env={
                **os.environ,
                "COMPUTE_WEBSERVICE_AMQP_URL": self.rabbit.url,
                "COMPUTE_WEBSERVICE_AMQP_ADMIN_URL": self.rabbit.admin_url,
            },
        )
        self._wait_http(f"{self.url}/v2/version", what="web service")
        if not self.client_id:
            out = subprocess.run(
                [_bin("compute-webservice"), "create-client", "--db", str(self.db)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            creds = json.loads(out)
            self.client_id, self.client_secret = creds["client_id"], creds["client_secret"]

    def stop_service(self) -> None:
        self._terminate("webservice")

    def client_env(self, user_dir: Path) -> dict[str, str]:
        """The env knobs (protocol.md §7) that point the official tools and ours at us."""
        env = os.environ.copy()
        env.update(
            GLOBUS_SDK_ENVIRONMENT="local",
            GLOBUS_SDK_SERVICE_URL_AUTH=f"{self.url}/",
            GLOBUS_COMPUTE_CLIENT_ID=self.client_id,
            GLOBUS_COMPUTE_CLIENT_SECRET=self.client_secret,
            GLOBUS_COMPUTE_USER_DIR=str(user_dir),
            COMPUTE_SERVICE_URL=self.url,
        )
        return env

    # ---- our endpoint ---------------------------------------------------------------------
    def configure_endpoint(self, name: str, config_yaml: str) -> Path:
        ep_dir = self.root / "user" / name
        ep_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (ep_dir / "config.yaml").write_text(config_yaml)
        return ep_dir

    def start_endpoint(
        self, name: str, timeout: float = 60, extra_env: dict[str, str] | None = None
    ) -> str:
        ep_dir = self.root / "user" / name
        ep_json = ep_dir / "endpoint.json"
        before = ep_json.stat().st_mtime if ep_json.exists() else 0.0
        self._spawn(
            f"endpoint:{name}",
            [_bin("compute-endpoint"), "start", name],
            env={**self.client_env(self.root / "user"), **(extra_env or {})},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ep_json.exists() and ep_json.stat().st_mtime > before:
                ep_id = str(json.loads(ep_json.read_text())["endpoint_id"])
                self.wait_online(ep_id, deadline - time.monotonic())
                return ep_id
            self._check_alive(f"endpoint:{name}")
            time.sleep(0.05)
        raise TimeoutError(f"endpoint {name} did not register in {timeout}s")

    def stop_endpoint(self, name: str) -> None:
        self._terminate(f"endpoint:{name}")

    # ---- the official endpoint (a test peer, driven only through its CLI) ----------------
    def start_official_endpoint(
        self, peer_bin: Path, name: str, template: str, timeout: float = 90
    ) -> str:
        """Configure and start `globus-compute-endpoint` from the peer venv; return its id.

        4.x always runs a core (manager) endpoint: tasks flow once our service sends
        `cmd_start_endpoint`, and the user endpoint's engine comes from `template`.
        """
        user_dir = self.root / "official-user"
        env = self.client_env(user_dir)
        peer_bin = peer_bin.absolute()  # the user endpoint starts in another directory
        cli = str(peer_bin / "globus-compute-endpoint")
        subprocess.run(
            [cli, "configure", "--multi-user", "false", name],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        ep_dir = user_dir / name
        # As root the official endpoint insists on a contact email, even with --multi-user false.
        (ep_dir / "config.yaml").write_text(
            f"display_name: {name}\nheartbeat_period: 5\nemail: tester@example.org\n"
        )
        (ep_dir / "user_config_template.yaml.j2").write_text(template)
        # The core endpoint starts user endpoints with a scrubbed environment.
        (ep_dir / "user_environment.yaml").write_text(
            f"GLOBUS_COMPUTE_USER_DIR: {user_dir}\nPATH: {peer_bin}:/usr/bin:/bin\n"
        )
        # It signals its whole process group on exit: _spawn gives it its own session.
        self._spawn(f"official:{name}", [cli, "start", name], env=env)
        ep_json = ep_dir / "endpoint.json"
        deadline = time.monotonic() + timeout
        while not ep_json.exists():
            self._check_alive(f"official:{name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"official endpoint {name} did not register")
            time.sleep(0.1)
        endpoint_id = str(json.loads(ep_json.read_text())["endpoint_id"])
        self.wait_online(endpoint_id, deadline - time.monotonic())
        return endpoint_id

    def stop_official_endpoint(self, name: str) -> None:
        proc = self.procs.get(f"official:{name}")
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        self._terminate(f"official:{name}")

    # ---- REST helpers ---------------------------------------------------------------------
    def token(self) -> str:
        basic = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        scope = "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all"
        req = urllib.request.Request(
            f"{self.url}/v2/oauth2/token",
            data=f"grant_type=client_credentials&scope={scope}".encode(),
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(json.load(resp)["access_token"])

    def get(self, path: str) -> Any:
        return self.api("GET", path)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        """One call of the service's REST API as the stack's client. Its token is fetched once
        (the fault cases call this while the service restarts) and again after a 401 (a
        service started on a new database no longer knows it)."""
        if not self._api_token:
            self._api_token = self.token()
        try:
            return self._call(method, path, body, timeout)
        except urllib.error.HTTPError as e:
            if e.code != 401:
                raise
        self._api_token = self.token()
        return self._call(method, path, body, timeout)

    def _call(self, method: str, path: str, body: Any, timeout: float) -> Any:
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={
                "Authorization": f"Bearer {self._api_token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)

    def wait_online(self, endpoint_id: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.get(f"/v2/endpoints/{endpoint_id}/status").get("status") == "online":
                    return
            except urllib.error.HTTPError as e:
                e.close()  # an answer holds its connection until closed
            except urllib.error.URLError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"endpoint {endpoint_id} not online after {timeout}s")

    # ---- processes --------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        # The child gets its own copy of the descriptor: ours is closed once it has started.
        with open(self.root / f"{name.replace(':', '-')}.log", "ab") as logf:
            self.procs[name] = subprocess.Popen(
                argv, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log_text(self, name: str) -> str:
        path = self.root / f"{name.replace(':', '-')}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode}:\n{self.log_text(name)[-3000:]}"
            )

    def _wait_http(self, url: str, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError) as e:
                if isinstance(e, urllib.error.HTTPError):
                    e.close()  # an answer holds its connection until closed
                self._check_alive("webservice")
                time.sleep(0.1)
        raise TimeoutError(f"{what} not answering at {url}")

    def _terminate(self, name: str, timeout: float = 30) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def close(self) -> None:
        for name in [n for n in self.procs if n.startswith("official:")]:
            self.stop_official_endpoint(name.split(":", 1)[1])
        for name in [n for n in self.procs if n.startswith("endpoint:")]:
            self._terminate(name)
        for name in list(self.procs):
            self._terminate(name)
        self.rabbit.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AnyPortStack(Stack):
    """A stack on a free port, beside other stacks on the host network (benchmarks, HPC
    tests): the official tools it starts find its service through `official_url_env`."""

    def __init__(self, root: Path | None = None) -> None:
        super().__init__(root, port=free_port())
        self.url_env = official_url_env(self.root, self.url)

    def client_env(self, user_dir: Path) -> dict[str, str]:
        return {**super().client_env(user_dir), **self.url_env}
