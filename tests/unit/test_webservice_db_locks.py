"""A second `Database` on the same file in one process must not hide another process's writes.

Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
included; the service's connection then lost its WAL to another process's last close and
never saw that process's later writes (a client made by `create-client` was unknown to it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from webservice.db import Database

WRITE = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (sys.argv[2],))
c.close()
"""


def test_another_process_writes_stay_visible(tmp_path: Path) -> None:
    path = str(tmp_path / "ws.db")
    first = Database(path)
    with first.tx() as c:
        c.execute("INSERT INTO meta (key, value) VALUES ('own', 'x')")
    Database(path).close()  # e.g. a tool or test opening the service's database in-process
    seen = []
    for key in [f"k{i}" for i in range(5)]:
        subprocess.run([sys.executable, "-c", WRITE, path, key], check=True)
        row = first.conn.execute("SELECT key FROM meta WHERE key=?", (key,)).fetchone()
        seen.append(row is not None)
    first.close()
    assert all(seen), seen
