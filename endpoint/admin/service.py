"""Client of the Compute web service, on globus_sdk apps (the official endpoint's auth knobs).

Credentials: `GLOBUS_COMPUTE_CLIENT_ID` + `GLOBUS_COMPUTE_CLIENT_SECRET` select a client
(client-credentials grant); otherwise tokens stored in `<user dir>/storage.db` by a previous
login are used. Tokens are cached in that same store, so a restart makes no token call.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import logging
import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import globus_sdk
from globus_sdk.globus_app import ClientApp, GlobusApp, GlobusAppConfig, UserApp
from globus_sdk.token_storage import SQLiteTokenStorage, TokenValidationError

from endpoint import __version__
from endpoint.amqp.queues import AmqpCreds
from endpoint.errors import AuthError, ConfigError, ServiceError, ServiceUnreachable
from endpoint.host.files import refuse_symlink

log = logging.getLogger(__name__)

#: The public client id the official tools use for interactive (user) logins.
DEFAULT_USER_CLIENT_ID = "4cf29807-cf21-49ec-9443-ff9a3fb9f81c"

_ENV_URLS = {
    "production": "https://compute.api.globus.org",
    "preview": "https://compute.api.preview.globus.org",
    "dev": "https://api.dev.funcx.org",
    "local": "http://localhost:5000",
}
_GLOBUSCS_ENVS = {"sandbox", "test", "integration", "staging"}

#: The token store, shared by every login of a user dir (as the official endpoint's).
STORAGE_FILE = "storage.db"

#: Where the service keeps authentication policies (Globus Auth's policy API path).
POLICIES_PATH = "/v2/api/policies"

#: Our own override, for tests and appliances that run the service on another port.
SERVICE_URL_ENV = "COMPUTE_SERVICE_URL"


def environment_name(configured: str | None, local_compute_services: bool) -> str:
    if local_compute_services:
        return "local"
    return configured or os.environ.get("GLOBUS_SDK_ENVIRONMENT") or "production"


def service_url(environment: str) -> str:
    """The web service base URL, mapped from the environment exactly as the SDK does."""
    override = os.environ.get(SERVICE_URL_ENV)
    if override:
        return override.rstrip("/")
    if environment in _GLOBUSCS_ENVS:
        return f"https://compute.api.{environment}.globuscs.info"
    return _ENV_URLS.get(environment, _ENV_URLS["production"])


def client_credentials() -> tuple[str, str] | None:
    """(id, secret) when the environment selects a client identity instead of a user login."""
    client_id = os.environ.get("GLOBUS_COMPUTE_CLIENT_ID")
    secret = os.environ.get("GLOBUS_COMPUTE_CLIENT_SECRET")
    if secret and not client_id:
        raise ConfigError("GLOBUS_COMPUTE_CLIENT_SECRET is set but GLOBUS_COMPUTE_CLIENT_ID is not")
    return (client_id, secret) if client_id and secret else None


def build_app(user_dir: Path, environment: str, login_flow_manager: Any = None) -> GlobusApp:
    """The globus-sdk app: a ClientApp for client credentials, else a UserApp.

    `login_flow_manager` (a LoginFlowManagerProvider) lets the CLI own the login prompt.
    """
    creds = client_credentials()
    client_id = os.environ.get("GLOBUS_COMPUTE_CLIENT_ID")
    secret = creds[1] if creds else None
    user_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if client_id and secret:
        namespace = f"clientprofile/{environment}/{client_id}"
    else:
        namespace = f"user/{environment}"
    try:
        # SQLite opens it by name, and the chmod below would follow a planted link too.
        refuse_symlink(user_dir / STORAGE_FILE)
    except OSError as e:
        raise AuthError(f"cannot use the token storage: {e}") from None
    storage = SQLiteTokenStorage(user_dir / STORAGE_FILE, namespace=namespace)
    # It holds refresh tokens: private whatever the umask was.
    with contextlib.suppress(OSError):
        os.chmod(user_dir / STORAGE_FILE, 0o600)
    try:
        config = GlobusAppConfig(token_storage=storage, environment=environment)
        if client_id and secret:
            return ClientApp(
                "compute-endpoint", client_id=client_id, client_secret=secret, config=config
            )
        config = GlobusAppConfig(
            token_storage=storage,
            environment=environment,
            request_refresh_tokens=True,
            login_flow_manager=login_flow_manager,
        )
        return UserApp(
            "compute-endpoint", client_id=client_id or DEFAULT_USER_CLIENT_ID, config=config
        )
    except ValueError as e:
        # globus-sdk knows no "local" auth environment; the official tools need the same knob.
        raise ConfigError(
            f"{e}: for environment {environment!r} set GLOBUS_SDK_SERVICE_URL_AUTH to the "
            "auth service URL (the local web service serves it, e.g. http://localhost:5000/)"
        ) from e


@dataclass(frozen=True)
class Registration:
    endpoint_id: str
    task_queue_info: dict[str, Any]
    result_queue_info: dict[str, Any]
    heartbeat_queue_info: dict[str, Any]
    command_queue_info: dict[str, Any] | None
    raw: dict[str, Any]

    def creds(self) -> AmqpCreds:
        """The three queues of a user endpoint, as a manager's start command carries them."""
        return AmqpCreds.parse(
            {
                "endpoint_id": self.endpoint_id,
                "task_queue_info": self.task_queue_info,
                "result_queue_info": self.result_queue_info,
                "heartbeat_queue_info": self.heartbeat_queue_info,
            }
        )


class ComputeService:
    """The few REST calls an endpoint makes, with errors mapped onto our tree."""

    def __init__(self, app: GlobusApp, base_url: str) -> None:
        self.base_url = base_url
        self._v2 = globus_sdk.ComputeClientV2(app=app, base_url=base_url)
        self._v3 = globus_sdk.ComputeClientV3(app=app, base_url=base_url)

    def _call(self, what: str, fn: Any, *args: Any) -> dict[str, Any]:
        try:
            resp = fn(*args)
        except globus_sdk.AuthAPIError as e:
            raise AuthError(f"{what}: login refused ({e.http_status}): {e.message}") from e
        except globus_sdk.GlobusAPIError as e:
            raise ServiceError(
                f"{what} refused ({e.http_status}): {e.message}", e.http_status
            ) from e
        except globus_sdk.NetworkError as e:
            raise ServiceUnreachable(f"{what}: cannot reach {self.base_url}: {e}") from e
        except globus_sdk.GlobusSDKUsageError as e:
            raise ServiceError(f"{what}: {e}") from e
        except (EOFError, TokenValidationError) as e:
            # The login flow ran (no stored tokens) and could not complete.
            raise AuthError(f"{what}: not logged in ({e}); run: compute-endpoint login") from e
        data = resp.data
        if not isinstance(data, dict):
            raise ServiceError(f"{what}: the service answered with a non-object body")
        return data

    def version_check(self) -> dict[str, Any]:
        info = self._call("version check", self._v2.get_version, "all")
        floor = str(info.get("min_ep_version", "0"))
        log.debug("service version info: %s", info)
        if _version_tuple(floor) > _version_tuple(ENDPOINT_PROTOCOL_VERSION):
            raise ServiceError(
                f"the service requires endpoint version >= {floor}; "
                f"this endpoint speaks {ENDPOINT_PROTOCOL_VERSION}"
            )
        return info

    def register(self, endpoint_id: str | None, body: dict[str, Any]) -> Registration:
        if endpoint_id:
            data = self._call("register", self._v3.update_endpoint, endpoint_id, body)
        else:
            data = self._call("register", self._v3.register_endpoint, body)
        try:
            reg = Registration(
                endpoint_id=str(data["endpoint_id"]),
                task_queue_info=data["task_queue_info"],
                result_queue_info=data["result_queue_info"],
                heartbeat_queue_info=data["heartbeat_queue_info"],
                command_queue_info=data.get("command_queue_info"),
                raw=data,
            )
        except KeyError as e:
            raise ServiceError(f"register: the service response lacks {e.args[0]!r}") from e
        if endpoint_id and reg.endpoint_id != endpoint_id:
            raise ServiceError(
                f"register: asked for endpoint {endpoint_id}, service answered {reg.endpoint_id}"
            )
        return reg

    def status(self, endpoint_id: str) -> str:
        """`online` or `offline` (or whatever newer state the service reports)."""
        data = self._call("status", self._v2.get_endpoint_status, endpoint_id)
        return str(data.get("status", "unknown"))

    def delete(self, endpoint_id: str) -> None:
        self._call("delete", self._v2.delete_endpoint, endpoint_id)

    def lock(self, endpoint_id: str) -> None:
        """Refuse the endpoint's registrations for a while (`stop --remote`)."""
        self._call("lock", self._v3.lock_endpoint, endpoint_id)

    def create_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        """POST an authentication policy (Globus Auth's shape); the policy as created."""
        post = functools.partial(self._v2.post, data={"policy": policy})
        data = self._call("create authentication policy", post, POLICIES_PATH)
        created = data.get("policy")
        if not isinstance(created, dict) or not isinstance(created.get("id"), str):
            raise ServiceError("create authentication policy: the answer names no policy id")
        return created

    def delete_policy(self, policy_id: str) -> None:
        self._call("delete authentication policy", self._v2.delete, f"{POLICIES_PATH}/{policy_id}")


#: The official endpoint version whose protocol we speak (for the service's min_ep_version).
ENDPOINT_PROTOCOL_VERSION = "4.19.0"


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def registration_body(
    name: str, config_text: str, config: Any, mode: str = "single_user"
) -> dict[str, Any]:
    """The POST/PUT /v3/endpoints document (keys present only when set, as officially)."""
    body: dict[str, Any] = {
        "endpoint_name": name,
        "metadata": {
            "endpoint_version": ENDPOINT_PROTOCOL_VERSION,
            "endpoint_implementation": f"container-compute-endpoint {__version__}",
            "endpoint_mode": mode,
            "python_version": platform.python_version(),
            "hostname": socket.getfqdn(),
            "local_user": getpass.getuser(),
            "endpoint_config": config_text,
        },
        # Listing in the web UI (any endpoint kind, as officially since 4.18); no access.
        "public": bool(getattr(config, "public", False)),
        "high_assurance": bool(getattr(config, "high_assurance", False)),
    }
    if config.display_name:
        body["display_name"] = config.display_name
    if config.allowed_functions:
        body["allowed_functions"] = [str(f) for f in config.allowed_functions]
    if config.authentication_policy:
        body["authentication_policy"] = str(config.authentication_policy)
    if config.subscription_id:
        body["subscription_uuid"] = str(config.subscription_id)
    if config.admins:
        body["admins"] = [str(a) for a in config.admins]
    return body
