"""The manager's audit log: one JSON object per line for every user endpoint start and stop.

Each record says who (the Globus identity and the local user), which config (its hash), which
process (pid) and how it ended (exit status). The file is 0600 and opened for append, each
record is one `write` (whole lines, even if two managers shared a file by mistake).

Starting a user endpoint is refused when its start cannot be recorded: an unaudited user
endpoint is worse than a refused one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from endpoint.errors import SpawnError
from endpoint.host.files import open_private

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.log"


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.fchmod(self._fd, 0o600)

    def record(self, event: str, **fields: Any) -> None:
        """Append one record; SpawnError if it could not be written."""
        doc = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event}
        doc.update({k: v for k, v in fields.items() if v is not None})
        line = (json.dumps(doc, sort_keys=False, default=str) + "\n").encode()
        with self._lock:
            try:
                os.write(self._fd, line)
            except OSError as e:
                raise SpawnError(f"cannot write the audit log {self.path}: {e.strerror}") from e

    def record_quietly(self, event: str, **fields: Any) -> None:
        """Like `record`, for events that happen anyway (a stop): a failure is only logged."""
        try:
            self.record(event, **fields)
        except SpawnError as e:
            log.error("%s", e)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read(path: Path) -> list[dict[str, Any]]:
    """Every record of an audit log (for tests and tools)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
