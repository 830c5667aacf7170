"""Logging: one `configure` call sets the file and console handlers for a command.

`start` writes `<ep_dir>/endpoint.log` (or `paths.endpoint_log`), rotating at 100 MiB with one
backup as the official endpoint does, and mirrors it to stderr while in the foreground. After
`--detach` the console handler goes away: stderr then points into the same log file.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import sys
from pathlib import Path

from endpoint.host.files import is_special, open_append

LOG_MAX_BYTES = 100 * 1024 * 1024
LOG_BACKUPS = 1
FILE_FORMAT = (
    "%(asctime)s %(levelname)s %(processName)s-%(process)d %(threadName)s "
    "%(name)s:%(lineno)d %(funcName)s %(message)s"
)
CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PLAIN_FORMAT = "%(levelname)s: %(message)s"

#: Third-party loggers that are chatty at INFO.
_QUIET = ("pika", "globus_sdk", "urllib3", "parsl")
_OURS = "endpoint"


class _NoFollowRotatingHandler(logging.handlers.RotatingFileHandler):
    """Opens (and re-opens after each rollover) its file without following a symlink."""

    def _open(self) -> io.TextIOWrapper:
        fd = open_append(self.baseFilename)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def file_handler(path: Path) -> logging.Handler:
    """The handler of the endpoint's log file; OSError if a symlink or FIFO was planted."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if is_special(path):
        # /dev/stdout and friends, named on purpose: followed, and never rotated.
        return logging.FileHandler(path, mode="a")
    os.close(open_append(path))  # refuses a planted link before anything is written
    return _NoFollowRotatingHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS)


def configure(
    *,
    debug: bool = False,
    log_file: Path | None = None,
    console: bool = True,
    console_level: int | None = None,
) -> None:
    """Replace every root handler: a file handler if `log_file`, a stderr one if `console`.

    Without a log file the console shows our INFO lines tersely (commands like `stop`);
    with one it mirrors the file in the foreground.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    level = logging.DEBUG if debug else logging.INFO
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger(_OURS).setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    # Each failed reconnect makes pika's adapters log ~10 ERROR lines with tracebacks (a reset
    # during the handshake even reads "incompatible protocol versions"); our AMQP session logs
    # the one-line reason and its retry plan instead. `--debug` still shows them.
    logging.getLogger("pika.adapters").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    if log_file is not None:
        handler = file_handler(log_file)
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(
            logging.Formatter(CONSOLE_FORMAT if (log_file or debug) else PLAIN_FORMAT)
        )
        stream.setLevel(console_level if console_level is not None else level)
        root.addHandler(stream)
