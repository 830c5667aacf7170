"""The SQLite database: connection settings, schema, and a transaction helper.

One connection per process, used only from the event-loop thread. Every transaction is a plain
synchronous block with no `await` inside, so coroutines can never interleave their writes.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,                 -- 'access' | 'refresh'
    client_id TEXT NOT NULL,
    resource_server TEXT NOT NULL,
    scopes TEXT NOT NULL,               -- space separated, as granted
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    refresh_hash TEXT                   -- for an access token: the refresh token it came with
);
CREATE INDEX IF NOT EXISTS tokens_by_refresh ON tokens (refresh_hash);

CREATE TABLE IF NOT EXISTS functions (
    function_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    code TEXT NOT NULL,
    description TEXT,
    meta TEXT NOT NULL,                 -- JSON
    public INTEGER NOT NULL,
    group_id TEXT,
    created REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS endpoints (
    endpoint_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    display_name TEXT,
    mode TEXT NOT NULL,                 -- 'single_user' | 'manager'
    public INTEGER NOT NULL,
    locked_until REAL NOT NULL DEFAULT 0,
    allowed_functions TEXT NOT NULL,    -- JSON list of function ids; empty = any
    registration TEXT NOT NULL,         -- JSON: the last registration body
    created REAL NOT NULL,
    updated REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS user_endpoints (
    uep_id TEXT PRIMARY KEY,
    manager_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    user_opts TEXT NOT NULL,            -- JSON
    user_runtime TEXT NOT NULL,         -- JSON, of the latest submit
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ueps_by_manager ON user_endpoints (manager_id);

CREATE TABLE IF NOT EXISTS task_groups (
    task_group_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    queue_name TEXT,                    -- set once its result queue was declared
    created REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    task_group_id TEXT NOT NULL,
    function_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,          -- as submitted to (a manager for user endpoints)
    route_id TEXT NOT NULL,             -- whose `<id>.tasks` queue got it (the UEP for managers)
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    exception TEXT,
    details TEXT,                       -- JSON
    completion_t REAL,
    submit_received_ns INTEGER NOT NULL,
    result_published_ns INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_by_group ON tasks (task_group_id);
-- The status page lists an identity's newest tasks.
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner);
-- Partial: only waiting tasks are ever looked up by route or endpoint, and a finished task
-- then costs one index delete instead of a re-insert. Queries must repeat this exact WHERE.
CREATE INDEX IF NOT EXISTS waiting_tasks_by_route ON tasks (route_id)
    WHERE status NOT IN ('success', 'failed');
CREATE INDEX IF NOT EXISTS waiting_tasks_by_endpoint ON tasks (endpoint_id)
    WHERE status NOT IN ('success', 'failed');

-- Broker accounts handed out (`principals.py`): the password is derived from the service key
-- and the generation, so rotating one is a bump here and nothing secret is stored per account.
-- A revoked account keeps its generation: its next life must not reuse old passwords.
CREATE TABLE IF NOT EXISTS broker_principals (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);

-- Deleted endpoint ids: only their owner may ever register them again.
CREATE TABLE IF NOT EXISTS deleted_endpoints (
    endpoint_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    deleted_at REAL NOT NULL
);

-- Authentication policies (`store/policies.py`); the domain lists are JSON (NULL: not set).
CREATE TABLE IF NOT EXISTS policies (
    policy_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    project_id TEXT,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    high_assurance INTEGER NOT NULL,
    authentication_assurance_timeout INTEGER,
    required_mfa INTEGER NOT NULL,
    domain_constraints_include TEXT,
    domain_constraints_exclude TEXT,
    created REAL NOT NULL
);

-- A client's username when it is not `<client_id>@clients.auth.globus.org` (create-client
-- --username): what authentication policies match domains against. A table of its own, so
-- that a database made before it gains it at start (schema version unchanged).
CREATE TABLE IF NOT EXISTS client_usernames (
    client_id TEXT PRIMARY KEY,
    username TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS heartbeats (
    endpoint_id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    period REAL,
    active INTEGER NOT NULL,
    global_state TEXT NOT NULL          -- JSON
);
"""


#: Rows per `IN (...)` query: far below SQLite's variable limit, large enough to be cheap.
IN_CHUNK = 500


def chunked(items: Sequence[str], size: int = IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(n: int) -> str:
    """`?,?,...` for an `IN (...)` clause of n values."""
    return ",".join("?" * n)


def _create_private(path: Path) -> None:
    """Create the database file 0600 (it holds token and secret hashes) before SQLite opens it.

    SQLite gives its -wal and -shm files the database file's mode, so they are private too.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Never open and close an existing database file: closing any descriptor of it drops every
    # POSIX lock this process holds on it, those of an open SQLite connection included (a
    # second `Database` in the service's process: tests, tools). Another process's last
    # connection then takes itself for the only one and deletes the WAL under the first, which
    # from then on never sees that process's writes (a `create-client` client unknown to it).
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.chmod(path, 0o600)  # also a file made before this rule, or under a loose umask


class Database:
    """Owns the sqlite3 connection."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            _create_private(Path(path))
        # Autocommit mode: transactions are explicit (`tx`), so a read never holds a lock.
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self._configure(path)
        self.conn.executescript(SCHEMA)
        self._check_version()

    def _configure(self, path: str) -> None:
        if path != ":memory:":
            # WAL + NORMAL: a commit is durable against a process crash (what a restart of the
            # service needs) without an fsync per transaction; checkpoints still fsync.
            self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=OFF")
        self.conn.execute("PRAGMA busy_timeout=5000")

    def _check_version(self) -> None:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row["value"]) != SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {row['value']} is not {SCHEMA_VERSION}; "
                "use a fresh --db file"
            )

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; commits on success, rolls back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()
