"""`compute-endpoint` (alias `globus-compute-endpoint`): the only module that prints or exits.

Exit codes follow the official endpoint's (features.md §1.4) so scripts keep working.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from endpoint import __version__, launch
from endpoint.errors import (
    AlreadyRunning,
    ConfigError,
    EndpointError,
    LifecycleError,
    ServiceError,
    ServiceUnreachable,
)
from endpoint.lifecycle import (
    CONFIG_FILE,
    State,
    clean_stale_pid,
    endpoint_dir,
    read_endpoint_id,
    read_pid,
    state_of,
    user_dir,
)
from endpoint.service import ENDPOINT_PROTOCOL_VERSION

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78
EX_FAILURE = 1

STOP_GRACE_S = 40.0

log = logging.getLogger("endpoint")


def _service_exit_code(err: ServiceError) -> int:
    if isinstance(err, ServiceUnreachable):
        return EX_TEMPFAIL
    if err.http_status in (404, 409, 423):
        return EX_UNAVAILABLE
    if err.http_status in (400, 422):
        return EX_DATAERR
    return EX_SOFTWARE


def cmd_configure(args: argparse.Namespace) -> int:
    path = launch.configure(args.name)
    print(f"Created profile for endpoint named <{args.name}>\n\n\tConfiguration file: {path}\n")
    print(f"Use `compute-endpoint start {args.name}` to start the endpoint.")
    return EX_OK


def cmd_start(args: argparse.Namespace) -> int:
    launch.start(args.name, args.endpoint_uuid)
    return EX_OK


def cmd_stop(args: argparse.Namespace) -> int:
    ep_dir = endpoint_dir(args.name)
    if not (ep_dir / CONFIG_FILE).exists():
        raise LifecycleError(f"endpoint {args.name!r} is not configured")
    if state_of(ep_dir) not in (State.RUNNING, State.DISCONNECTED):
        clean_stale_pid(ep_dir)
        print(f"Endpoint <{args.name}> is not running.")
        return EX_OK
    pid = read_pid(ep_dir)
    if pid is None:
        raise LifecycleError(f"cannot read the pid of endpoint {args.name!r}")
    _terminate(pid, ep_dir)
    print(f"> Endpoint <{args.name}> is now stopped")
    return EX_OK


def _terminate(pid: int, path: Path) -> None:
    """SIGTERM, wait for a clean exit, then SIGKILL: one `stop` always suffices."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        if state_of(path) not in (State.RUNNING, State.DISCONNECTED):
            return
        time.sleep(0.1)
    log.warning("endpoint pid %s did not stop in %ss; sending SIGKILL", pid, STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while state_of(path) in (State.RUNNING, State.DISCONNECTED):
        time.sleep(0.1)
    clean_stale_pid(path)


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    root = user_dir()
    for ep_dir in sorted(root.iterdir()) if root.is_dir() else []:
        if (ep_dir / CONFIG_FILE).exists():
            rows.append(
                {
                    "endpoint_id": read_endpoint_id(ep_dir),
                    "status": state_of(ep_dir).value,
                    "name": ep_dir.name,
                }
            )
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return EX_OK
    headers = ("Endpoint ID", "Status", "Endpoint Name")
    table = [(str(r["endpoint_id"]), str(r["status"]), str(r["name"])) for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in table]) for i, h in enumerate(headers)]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    print(line)
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print(line)
    for row in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    print(line)
    return EX_OK


def cmd_version(_args: argparse.Namespace) -> int:
    print(
        f"compute-endpoint {__version__} (Globus Compute endpoint protocol "
        f"{ENDPOINT_PROTOCOL_VERSION})"
    )
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compute-endpoint", description=__doc__)
    p.add_argument("--debug", action="store_true", help="verbose logging")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("configure", help="create an endpoint's config.yaml")
    c.add_argument("name", nargs="?", default="default")
    c.set_defaults(func=cmd_configure)
    s = sub.add_parser("start", help="register and run an endpoint in the foreground")
    s.add_argument("name", nargs="?", default="default")
    s.add_argument("--endpoint-uuid", default=None, help="register under this UUID")
    s.set_defaults(func=cmd_start)
    t = sub.add_parser("stop", help="stop a running endpoint (SIGTERM, then SIGKILL)")
    t.add_argument("name", nargs="?", default="default")
    t.set_defaults(func=cmd_stop)
    ls = sub.add_parser("list", help="list configured endpoints and their states")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    ls.set_defaults(func=cmd_list)
    v = sub.add_parser("version", help="print the version")
    v.set_defaults(func=cmd_version)
    return p


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pika").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.debug)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as e:
        print(f"Error: {e}", file=sys.stderr)
        return EX_CONFIG
    except AlreadyRunning as e:
        print(f"Error: {e}", file=sys.stderr)
        return EX_CANTCREAT
    except ServiceError as e:
        print(f"Error: {e}", file=sys.stderr)
        return _service_exit_code(e)
    except EndpointError as e:
        print(f"Error: {e}", file=sys.stderr)
        return EX_FAILURE


if __name__ == "__main__":
    sys.exit(main())
