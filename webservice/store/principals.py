"""The service key and the generation of each broker account (see `principals.py`).

Additive tables only (`CREATE TABLE IF NOT EXISTS`): a database of an earlier version gains
them at its next open.
"""

from __future__ import annotations

import secrets

from webservice.db import Database

KEY_NAME = "broker_key"


class PrincipalStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def key(self) -> bytes:
        """The service's secret key (made at first use; only in this 0600 database)."""
        with self._db.tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key=?", (KEY_NAME,)).fetchone()
            if row is not None:
                return bytes.fromhex(row["value"])
            key = secrets.token_bytes(32)
            c.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (KEY_NAME, key.hex()))
            return key

    def generation(self, name: str) -> int | None:
        """The current generation of a live account (None: never made, or revoked)."""
        row = self._db.conn.execute(
            "SELECT generation FROM broker_principals WHERE name=? AND revoked=0", (name,)
        ).fetchone()
        return None if row is None else int(row["generation"])

    def bump(self, name: str) -> int:
        """The next generation of `name` (1 for a new account; a revoked one comes back with
        a generation it never had, so no password it ever had works again)."""
        with self._db.tx() as c:
            c.execute(
                "INSERT INTO broker_principals (name, generation) VALUES (?, 1)"
                " ON CONFLICT (name) DO UPDATE SET generation=generation+1, revoked=0",
                (name,),
            )
            row = c.execute(
                "SELECT generation FROM broker_principals WHERE name=?", (name,)
            ).fetchone()
        return int(row["generation"])

    def bump_if_known(self, name: str) -> None:
        """Rotate `name` if it was ever handed out (the service puts the new password)."""
        with self._db.tx() as c:
            c.execute("UPDATE broker_principals SET generation=generation+1 WHERE name=?", (name,))

    def all(self) -> dict[str, int]:
        """Every live account and its generation."""
        rows = self._db.conn.execute(
            "SELECT name, generation FROM broker_principals WHERE revoked=0"
        ).fetchall()
        return {str(r["name"]): int(r["generation"]) for r in rows}

    def revoke(self, names: list[str]) -> None:
        with self._db.tx() as c:
            c.executemany(
                "UPDATE broker_principals SET revoked=1 WHERE name=?", [(n,) for n in names]
            )
