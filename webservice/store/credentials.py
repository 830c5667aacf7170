"""OAuth2 clients and the tokens issued to them; only hashes of secrets and tokens are stored."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from webservice.db import Database

ACCESS = "access"
REFRESH = "refresh"

#: The shortest client secret accepted or created (a random one has 43 characters).
MIN_SECRET_LENGTH = 24

#: A configured username: `local@domain`, in the characters identity usernames use.
USERNAME_RE = re.compile(r"[A-Za-z0-9._+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63}){0,8}")


def token_hash(token: str) -> str:
    # Tokens are 256 random bits, so an unsalted digest is safe and lets us look them up.
    return hashlib.sha256(token.encode()).hexdigest()


def _secret_hash(secret: str, salt: str) -> str:
    # Salted, because a secret may be chosen by a person (`create-client --client-secret`).
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def identity_username(identity: str) -> str:
    # Globus Auth names a client's identity this way; endpoints log it.
    return f"{identity}@clients.auth.globus.org"


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    #: Set with `create-client --username`; otherwise Globus Auth's name for a client.
    configured_username: str | None = None

    @property
    def username(self) -> str:
        return self.configured_username or identity_username(self.client_id)


@dataclass(frozen=True)
class TokenRecord:
    kind: str
    client_id: str
    resource_server: str
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    refresh_hash: str | None


_CLIENT_COLUMNS = (
    "c.client_id, c.name, u.username FROM clients c"
    " LEFT JOIN client_usernames u ON u.client_id = c.client_id"
)


def _client(row: Any) -> Client:
    return Client(row["client_id"], row["name"], row["username"])


class CredentialStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create_client(
        self,
        name: str = "",
        client_id: str | None = None,
        secret: str | None = None,
        username: str | None = None,
    ) -> tuple[str, str]:
        """Create (or reset the secret of) a client; returns its id and the clear secret.

        Raises ValueError for a chosen secret shorter than MIN_SECRET_LENGTH, or a username
        that is not `local@domain`.
        """
        cid = str(uuid.UUID(client_id)) if client_id else str(uuid.uuid4())
        secret = secret or secrets.token_urlsafe(32)
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"a client secret needs at least {MIN_SECRET_LENGTH} characters")
        if username is not None and not USERNAME_RE.fullmatch(username):
            raise ValueError(f"a username is local@domain (letters, digits, ._+-): {username!r}")
        salt = secrets.token_hex(8)
        with self._db.tx() as c:
            c.execute(
                "INSERT INTO clients (client_id, secret_hash, name, created) VALUES (?,?,?,?)"
                " ON CONFLICT (client_id) DO UPDATE SET secret_hash=excluded.secret_hash,"
                " name=excluded.name",
                (cid, f"{salt}${_secret_hash(secret, salt)}", name or cid, time.time()),
            )
            if username is not None:
                c.execute(
                    "INSERT OR REPLACE INTO client_usernames (client_id, username) VALUES (?,?)",
                    (cid, username),
                )
        return cid, secret

    def get_client(self, client_id: str) -> Client | None:
        row = self._db.conn.execute(
            f"SELECT {_CLIENT_COLUMNS} WHERE c.client_id=?", (client_id,)
        ).fetchone()
        return _client(row) if row else None

    def verify_client(self, client_id: str, secret: str) -> Client | None:
        row = self._db.conn.execute(
            f"SELECT c.secret_hash, {_CLIENT_COLUMNS} WHERE c.client_id=?", (client_id,)
        ).fetchone()
        if row is None:
            return None
        if len(secret) < MIN_SECRET_LENGTH:
            return None  # set before the minimum existed: no longer accepted
        salt, _, digest = row["secret_hash"].partition("$")
        if not hmac.compare_digest(digest, _secret_hash(secret, salt)):
            return None
        return _client(row)

    def issue(
        self,
        kind: str,
        client_id: str,
        resource_server: str,
        scopes: list[str],
        ttl_s: int,
        refresh_hash: str | None = None,
    ) -> tuple[str, TokenRecord]:
        token = secrets.token_urlsafe(32)
        now = time.time()
        rec = TokenRecord(
            kind, client_id, resource_server, tuple(scopes), now, now + ttl_s, refresh_hash
        )
        with self._db.tx() as c:
            c.execute(
                "INSERT INTO tokens (token_hash, kind, client_id, resource_server, scopes,"
                " issued_at, expires_at, refresh_hash) VALUES (?,?,?,?,?,?,?,?)",
                (
                    token_hash(token),
                    kind,
                    client_id,
                    resource_server,
                    " ".join(scopes),
                    rec.issued_at,
                    rec.expires_at,
                    refresh_hash,
                ),
            )
        return token, rec

    def lookup(self, token: str, kind: str = ACCESS) -> TokenRecord | None:
        """The record of a live token of `kind`, or None (unknown, expired or revoked)."""
        row = self._db.conn.execute(
            "SELECT * FROM tokens WHERE token_hash=? AND kind=?", (token_hash(token), kind)
        ).fetchone()
        if row is None or row["expires_at"] <= time.time():
            return None
        return TokenRecord(
            row["kind"],
            row["client_id"],
            row["resource_server"],
            tuple(row["scopes"].split()),
            row["issued_at"],
            row["expires_at"],
            row["refresh_hash"],
        )

    def revoke(self, token: str, client_id: str | None = None) -> bool:
        """Forget a token (and, for a refresh token, the access tokens it minted)."""
        digest = token_hash(token)
        sql = "DELETE FROM tokens WHERE token_hash=?"
        args: tuple[str, ...] = (digest,)
        if client_id is not None:
            sql += " AND client_id=?"
            args += (client_id,)
        with self._db.tx() as c:
            cur = c.execute(sql, args)
            if cur.rowcount:
                c.execute("DELETE FROM tokens WHERE refresh_hash=?", (digest,))
        return bool(cur.rowcount)

    def purge_expired(self) -> int:
        with self._db.tx() as c:
            return c.execute("DELETE FROM tokens WHERE expires_at <= ?", (time.time(),)).rowcount

    def logged_in_at(self, record: TokenRecord) -> float:
        """When the login behind an access token happened: the issue time of the refresh
        token it was minted from (refreshing is not logging in again), else its own."""
        if record.refresh_hash:
            row = self._db.conn.execute(
                "SELECT issued_at FROM tokens WHERE token_hash=?", (record.refresh_hash,)
            ).fetchone()
            if row is not None:
                return float(row["issued_at"])
        return record.issued_at
