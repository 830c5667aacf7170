"""The broker's management API: the accounts the service hands out, and what each may do.

The service's own AMQP account never leaves the service (issue 13, finding 1). Each endpoint and
each SDK client gets a broker user of its own, made and changed here through RabbitMQ's
management HTTP API (`rabbitmq_management`; about 2 ms a call on loopback). The API needs an
administrator: the embedded broker's, or the one a site names with `--amqp-admin-url`.

Calls are blocking HTTP on loopback, so the async wrappers run them in a worker thread: the event
loop never waits on the broker's HTTP listener.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from webservice.errors import BrokerUnavailable

log = logging.getLogger(__name__)

#: Seconds one management call may take.
CALL_TIMEOUT_S = 15.0


class BrokerAdminError(BrokerUnavailable):
    """The management API refused or failed a call (503: the SDK retries; nothing was sent)."""


@dataclass(frozen=True)
class Grant:
    """What one broker user may do, as RabbitMQ permission regexes on resource names, plus
    topic permissions (routing-key regexes for publishes) per topic exchange."""

    configure: str
    write: str
    read: str
    topic_writes: dict[str, str] = field(default_factory=dict)


def _split_admin_url(url: str) -> tuple[str, int, str, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the broker admin URL must be http://USER:PASSWORD@HOST:PORT/: {url!r}")
    if not parts.username or parts.password is None:
        raise ValueError("the broker admin URL must carry the administrator's USER:PASSWORD")
    return parts.hostname, parts.port or 15672, unquote(parts.username), unquote(parts.password)


class BrokerAdmin:
    """Users, permissions and topic permissions in one vhost of one broker."""

    def __init__(self, admin_url: str, vhost: str) -> None:
        self._host, self._port, user, password = _split_admin_url(admin_url)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        self.vhost = vhost
        self._vhost_q = quote(vhost, safe="")

    # ---- blocking calls --------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, ok_404: bool = False) -> Any:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=CALL_TIMEOUT_S)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, f"/api/{path}", body=data, headers=self._headers)
            resp = conn.getresponse()
            text = resp.read()
        except OSError as e:
            raise BrokerAdminError(f"the broker's management API is unreachable: {e}") from e
        finally:
            conn.close()
        if resp.status == 404 and ok_404:
            return None
        if resp.status >= 300:
            # Never the request body: it may hold a password.
            raise BrokerAdminError(
                f"the broker's management API answered {resp.status} to {method} /api/{path}"
            )
        return json.loads(text) if text else None

    def check(self) -> None:
        """The account is an administrator (raises BrokerAdminError otherwise)."""
        me = self._call("GET", "whoami")
        tags = me.get("tags") if isinstance(me, dict) else None
        tags = tags if isinstance(tags, list) else str(tags or "").split(",")
        if "administrator" not in tags:
            raise BrokerAdminError(
                f"the broker admin account {me.get('name')!r} is not an administrator"
            )

    def users(self) -> set[str]:
        return {str(u["name"]) for u in self._call("GET", "users") or []}

    def put_user(self, name: str, password: str, grant: Grant) -> None:
        """Create or update `name` with `password` and exactly `grant`."""
        user = quote(name, safe="")
        self._call("PUT", f"users/{user}", {"password": password, "tags": ""})
        self._call(
            "PUT",
            f"permissions/{self._vhost_q}/{user}",
            {"configure": grant.configure, "write": grant.write, "read": grant.read},
        )
        for exchange, write in grant.topic_writes.items():
            self._call(
                "PUT",
                f"topic-permissions/{self._vhost_q}/{user}",
                {"exchange": exchange, "write": write, "read": "^$"},
            )

    def delete_user(self, name: str) -> None:
        """Remove `name` and close its connections (revocation takes effect at once)."""
        self._call("DELETE", f"users/{quote(name, safe='')}", ok_404=True)
        self._call("DELETE", f"connections/username/{quote(name, safe='')}", ok_404=True)

    # ---- async wrappers --------------------------------------------------------------------

    async def aput_user(self, name: str, password: str, grant: Grant) -> None:
        await asyncio.to_thread(self.put_user, name, password, grant)

    async def adelete_user(self, name: str) -> None:
        await asyncio.to_thread(self.delete_user, name)

    async def ausers(self) -> set[str]:
        return await asyncio.to_thread(self.users)
