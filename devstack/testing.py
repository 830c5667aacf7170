"""Run the service in-process for tests and benchmarks: uvicorn in a thread, real HTTP.

    with ServiceThread(Settings(amqp_url=..., broker_admin_url=..., db_path=...)) as svc:
        api = svc.new_identity()            # a new OAuth2 client, holding a Compute token
        api.post("/v3/functions", json={...})

Needs the `dev` extra (httpx).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn

from webservice.broker import free_port
from webservice.scopes import COMPUTE_SCOPE
from webservice.server import uvicorn_config
from webservice.settings import Settings
from webservice.store import Store

if TYPE_CHECKING:
    from webservice.broker import PrivateRabbit


def service_settings(rabbit: PrivateRabbit, db_path: Path | str, **overrides: Any) -> Settings:
    """Settings for a test web service on `rabbit`: its own database, the broker's management
    API (the service makes a broker account per principal) and a task-group queue prefix that
    no other test module shares."""
    fields: dict[str, Any] = {
        "amqp_url": rabbit.url,
        "broker_admin_url": rabbit.admin_url,
        "db_path": str(db_path),
        "queue_prefix": f"tg.{uuid.uuid4().hex[:8]}.",
        **overrides,
    }
    return Settings(**fields)


class ServiceStartError(RuntimeError):
    """The service thread did not come up (see its log)."""


class ServiceThread:
    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int | None = None):
        self.settings = settings
        self.host = host
        self.port = port or free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60) -> ServiceThread:
        # The same edge as `compute-webservice serve` (header deadline, connection cap, EMFILE
        # pause): what tests and benchmarks measure is what users run.
        self._server = uvicorn.Server(
            uvicorn_config(self.settings, self.host, self.port, "warning")
        )
        self._thread = threading.Thread(target=self._server.run, name="webservice", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServiceStartError(f"web service did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None

    def create_client(self, name: str = "") -> tuple[str, str]:
        """A new OAuth2 client in the service's database (a second connection; WAL allows it)."""
        store = Store.open(self.settings.db_path)
        try:
            return store.credentials.create_client(name)
        finally:
            store.close()

    def new_identity(self, name: str = "") -> ApiClient:
        client_id, secret = self.create_client(name)
        return ApiClient(self.url, client_id, fetch_token(self.url, client_id, secret))

    def __enter__(self) -> ServiceThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def fetch_token(base_url: str, client_id: str, secret: str, scope: str = COMPUTE_SCOPE) -> str:
    """A client-credentials access token, the way globus-sdk's ClientApp asks for one."""
    resp = httpx.post(
        f"{base_url}/v2/oauth2/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(client_id, secret),
    )
    resp.raise_for_status()
    token: str = resp.json()["access_token"]
    return token


class ApiClient(httpx.Client):
    """An httpx client bound to the service and one identity's bearer token."""

    def __init__(self, base_url: str, identity: str, token: str) -> None:
        super().__init__(base_url=base_url, headers={"Authorization": f"Bearer {token}"})
        self.identity = identity
        self.token = token

    def register_function(self, code: str = "12\n01\ngASVAA==\n", **extra: Any) -> str:
        body = {"function_name": "f", "function_code": code, "serialized": True, **extra}
        resp = self.post("/v3/functions", json=body)
        resp.raise_for_status()
        fid: str = resp.json()["function_uuid"]
        return fid

    def register_endpoint(self, single_user: bool = True, **extra: Any) -> dict[str, Any]:
        metadata = {"endpoint_mode": "single_user"} if single_user else {}
        body = {"endpoint_name": "ep", "metadata": metadata, **extra}
        resp = self.post("/v3/endpoints", json=body)
        resp.raise_for_status()
        reply: dict[str, Any] = resp.json()
        return reply

    def submit(self, endpoint_id: str, tasks: dict[str, list[str]], **extra: Any) -> httpx.Response:
        body = {"tasks": tasks, "create_queue": True, **extra}
        return self.post(f"/v3/endpoints/{endpoint_id}/submit", json=body)
