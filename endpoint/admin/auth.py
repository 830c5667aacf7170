"""`login`, `logout` and `whoami` on globus-sdk apps (service.build_app chooses which).

With `GLOBUS_COMPUTE_CLIENT_ID` and `GLOBUS_COMPUTE_CLIENT_SECRET` set, the identity is that
client's (client-credentials grant). Otherwise a user logs in through globus-sdk's command-line
authorization-code flow (PKCE): the CLI shows the authorize URL and reads back the code.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import globus_sdk
from globus_sdk.globus_app import ClientApp, GlobusApp
from globus_sdk.login_flows import CommandLineLoginFlowManager, LoginFlowManager
from globus_sdk.scopes import AuthScopes
from globus_sdk.token_storage import TokenValidationError

from endpoint.admin import service
from endpoint.admin.listing import list_endpoints
from endpoint.errors import AuthError, Refused, ServiceUnreachable
from endpoint.host.dirs import user_dir
from endpoint.host.pidlock import State

log = logging.getLogger(__name__)

ShowUrl = Callable[[str], None]
AskCode = Callable[[], str]


@dataclass(frozen=True)
class LoginPrompt:
    """How the CLI shows the authorize URL and reads the code back (it owns the terminal)."""

    show_url: ShowUrl
    ask_code: AskCode

    # A LoginFlowManagerProvider: globus-sdk calls this when it builds the UserApp.
    def for_globus_app(
        self, *, app_name: str, login_client: globus_sdk.AuthLoginClient, config: Any
    ) -> LoginFlowManager:
        return _PromptingFlow(
            login_client,
            redirect_uri=config.login_redirect_uri,
            request_refresh_tokens=config.request_refresh_tokens,
            native_prefill_named_grant=app_name,
            prompt=self,
        )


class _PromptingFlow(CommandLineLoginFlowManager):
    def __init__(self, login_client: globus_sdk.AuthLoginClient, *, prompt: LoginPrompt, **kw: Any):
        super().__init__(login_client, **kw)
        self._prompt = prompt

    def print_authorize_url(self, authorize_url: str) -> None:
        self._prompt.show_url(authorize_url)

    def prompt_for_code(self) -> str:
        with self._handle_input_errors():
            return self._prompt.ask_code().strip()


_IDENTITY_SCOPES = [AuthScopes.openid, AuthScopes.profile]


def identity_client(app: GlobusApp) -> globus_sdk.AuthClient:
    """An AuthClient on `app`. Every command asks for the same identity scopes, so a login
    made by one command (`login`, or `start`'s first run) satisfies all the others."""
    return globus_sdk.AuthClient(app=app, app_scopes=list(_IDENTITY_SCOPES))


def open_app(
    environment: str | None = None, prompt: LoginPrompt | None = None
) -> tuple[GlobusApp, globus_sdk.AuthClient]:
    """The app of this user dir with the Compute and identity scopes it will need."""
    env = service.environment_name(environment, False)
    app = service.build_app(user_dir(), env, login_flow_manager=prompt)
    # Attaching the clients registers their scope requirements with the app.
    globus_sdk.ComputeClientV2(app=app, base_url=service.service_url(env))
    return app, identity_client(app)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """globus-sdk errors as our AuthError / ServiceUnreachable."""
    try:
        yield
    except globus_sdk.NetworkError as e:
        raise ServiceUnreachable(f"{what}: cannot reach the auth service: {e}") from e
    except globus_sdk.GlobusAPIError as e:
        raise AuthError(f"{what} refused ({e.http_status}): {e.message}") from e
    except (EOFError, TokenValidationError) as e:
        raise AuthError(f"{what}: {e}") from e


def is_client_login() -> bool:
    return service.client_credentials() is not None


def login(force: bool, prompt: LoginPrompt) -> bool:
    """Log in if needed (always with `force`); False if already logged in."""
    with _translated("login"):
        app, _ = open_app(prompt=prompt)
        try:
            # A client app never "needs" a login (it fetches tokens on demand), so `login`
            # always gets one: that is what proves the id and secret work.
            if not force and not isinstance(app, ClientApp) and not app.login_required():
                return False
            app.login(force=True)
        finally:
            app.close()
    return True


def whoami() -> dict[str, Any]:
    """The userinfo document of the current login."""
    with _translated("whoami"):
        app, auth_client = open_app()
        try:
            if not isinstance(app, ClientApp) and app.login_required():
                raise AuthError("not logged in; run: compute-endpoint login")
            data = auth_client.userinfo().data
        finally:
            app.close()
    return dict(data) if isinstance(data, dict) else {}


@dataclass(frozen=True)
class LogoutResult:
    revoked: bool
    removed: Path | None


def running_endpoints() -> list[str]:
    return [row.name for row in list_endpoints() if row.state is State.RUNNING]


def logout(force: bool) -> LogoutResult:
    """Revoke this login's tokens and delete the token store.

    Refused while a local endpoint runs (it would lose its credentials) unless `force`.
    """
    running = running_endpoints()
    if running and not force:
        raise Refused(f"endpoint(s) {', '.join(running)} running: stop them first, or use --force")
    revoked = True
    try:
        with _translated("logout"):
            app, _ = open_app()
            try:
                app.logout(sweep=True)
            finally:
                app.close()
    except (AuthError, ServiceUnreachable) as e:
        # The local copy goes anyway: a logout must never leave usable tokens on disk.
        log.warning("tokens could not be revoked at the service: %s", e)
        revoked = False
    store = user_dir() / service.STORAGE_FILE
    removed = None
    for path in (store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")):
        if path.exists():
            path.unlink()
            removed = removed or path
    return LogoutResult(revoked, removed)
