"""One broker account per endpoint and per SDK client, each allowed only its own traffic.

Who gets what (issue 13, finding 1; README "Security model"):

* an endpoint (single-user, manager, or a manager's user endpoint) `ep.<endpoint id>`: read its
  own task and command queues; publish to `results` and `heartbeats` with its own routing keys
  only (RabbitMQ topic permissions); configure nothing, so it can neither declare, bind nor
  delete a queue;
* an SDK client `sdk.<client id>`: read the result queues of its own task groups, nothing else;
* the service's own account (an administrator) never leaves the service.

Passwords are derived from the service key and a per-account generation (HMAC), so the service
stores nothing secret per account and can re-create an account the broker lost. Rotation is a
new generation: an endpoint's at every registration, a user endpoint's at every start command
that starts it (not at the refreshes sent while it runs, which would race its reconnects), a
client's when its secret is reset. Deleting an endpoint deletes its accounts and closes their
connections.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
from urllib.parse import quote, urlsplit, urlunsplit

from webservice.broker_admin import BrokerAdmin, BrokerAdminError, Grant
from webservice.store.principals import PrincipalStore
from webservice.topology import (
    HEARTBEATS_EXCHANGE,
    HEARTBEATS_SUFFIX,
    RESULTS_EXCHANGE,
    RESULTS_SUFFIX,
    Names,
)

log = logging.getLogger(__name__)

ENDPOINT_USER_PREFIX = "ep."
CLIENT_USER_PREFIX = "sdk."
NOTHING = "^$"


def endpoint_user(endpoint_id: str) -> str:
    return f"{ENDPOINT_USER_PREFIX}{endpoint_id}"


def client_user(identity: str) -> str:
    return f"{CLIENT_USER_PREFIX}{identity}"


def _exactly(*names: str) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def endpoint_grant(names: Names, endpoint_id: str) -> Grant:
    return Grant(
        configure=NOTHING,
        write=_exactly(RESULTS_EXCHANGE, HEARTBEATS_EXCHANGE),
        read=_exactly(names.tasks_queue(endpoint_id), names.commands_queue(endpoint_id)),
        topic_writes={
            RESULTS_EXCHANGE: _exactly(f"{endpoint_id}{RESULTS_SUFFIX}"),
            HEARTBEATS_EXCHANGE: _exactly(f"{endpoint_id}{HEARTBEATS_SUFFIX}"),
        },
    )


def client_grant(names: Names, identity: str) -> Grant:
    # Task group ids are UUIDs: nothing else after the client's own prefix.
    prefix = re.escape(names.result_prefix(identity))
    return Grant(configure=NOTHING, write=NOTHING, read=f"^{prefix}[0-9a-f-]+$")


def with_credentials(url: str, username: str, password: str) -> str:
    """`url` (amqp[s]://...) with its user and password replaced."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Principals:
    """Creates, rotates, restores and revokes the accounts handed out."""

    def __init__(
        self, admin: BrokerAdmin, store: PrincipalStore, names: Names, handout_url: str
    ) -> None:
        self._admin = admin
        self._store = store
        self._names = names
        self._handout_url = handout_url
        self._key = store.key()
        # Accounts known to hold their current generation's password at the broker.
        self._current: dict[str, int] = {}

    async def check_admin(self, wait_s: float) -> None:
        """The management API answers as an administrator, waiting up to `wait_s` for it (the
        broker may be starting beside the service, as in the all-in-one image)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        delay = 0.25
        while True:
            try:
                await asyncio.to_thread(self._admin.check)
                return
            except BrokerAdminError as e:
                if loop.time() + delay > deadline:
                    raise
                log.info("broker management API not ready yet (%s); retrying", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _password(self, name: str, generation: int) -> str:
        mac = hmac.new(self._key, f"password\n{name}\n{generation}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    def _grant(self, name: str) -> Grant:
        if name.startswith(CLIENT_USER_PREFIX):
            return client_grant(self._names, name.removeprefix(CLIENT_USER_PREFIX))
        return endpoint_grant(self._names, name.removeprefix(ENDPOINT_USER_PREFIX))

    async def _url(self, name: str, rotate: bool) -> str:
        generation = self._store.generation(name)
        if rotate or generation is None:
            generation = self._store.bump(name)
        password = self._password(name, generation)
        if self._current.get(name) != generation:
            await self._admin.aput_user(name, password, self._grant(name))
            self._current[name] = generation
        return with_credentials(self._handout_url, name, password)

    async def endpoint_url(self, endpoint_id: str, rotate: bool) -> str:
        """The URL of the endpoint's own account; `rotate` makes a new password first."""
        return await self._url(endpoint_user(endpoint_id), rotate)

    async def client_url(self, identity: str) -> str:
        """The URL of an SDK client's account: stable, so the watchers of several processes of
        one client never lock each other out; `create-client` on an existing client (a new
        secret) bumps its generation, and the next call here puts the new password."""
        return await self._url(client_user(identity), rotate=False)

    async def revoke(self, endpoint_ids: list[str]) -> None:
        """Delete these endpoints' accounts and close their connections."""
        names = [endpoint_user(e) for e in endpoint_ids]
        for name in names:
            await self._admin.adelete_user(name)
            self._current.pop(name, None)
        self._store.revoke(names)

    async def restore(self) -> None:
        """Re-create accounts the broker lacks (a replaced or wiped broker), with the same
        passwords: what endpoints and clients hold stays valid. Runs at every connect; a
        management API that is down only delays it (accounts are also put when handed out)."""
        try:
            await self._restore()
        except BrokerAdminError as e:
            log.warning("could not check the broker's accounts: %s", e)

    async def _restore(self) -> None:
        known = await self._admin.ausers()
        restored = 0
        for name, generation in self._store.all().items():
            if name not in known:
                await self._admin.aput_user(
                    name, self._password(name, generation), self._grant(name)
                )
                restored += 1
            self._current[name] = generation
        if restored:
            log.warning("re-created %d broker account(s) the broker did not have", restored)
