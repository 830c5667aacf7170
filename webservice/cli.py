"""`compute-webservice`: the only place in the package that prints or exits.

    compute-webservice serve [--host H] [--port P] [--amqp-url URL] [--public-amqp-url URL] [--db F]
                             [--max-connections N] [--header-timeout S]
                             [--max-submission-bytes SIZE]
    compute-webservice create-client [--db F] [--name N] [--client-id ID] [--client-secret S]
                                     [--username local@domain]

Exit codes: 0 ok, 1 the service could not start, 2 bad usage (argparse), 3 broker start failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from webservice.broker import BrokerStartError
from webservice.limits import MAX_SUBMISSION_CEILING, Limits, parse_size
from webservice.principals import client_user
from webservice.server import embedded_broker, run
from webservice.settings import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_QUEUE_PREFIX, Settings
from webservice.settings import default_db_path as _default_db
from webservice.store import Store

RET_OK = 0
RET_START_FAILED = 1
RET_USAGE = 2
RET_BROKER = 3

ENV = "COMPUTE_WEBSERVICE_"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV + name, default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compute-webservice", description="A local Globus Compute web service."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    db_help = f"SQLite state file (env {ENV}DB; default {_default_db()})"

    serve = sub.add_parser("serve", help="run the web service")
    serve.add_argument("--host", default=_env("HOST", DEFAULT_HOST), help=f"env {ENV}HOST")
    serve.add_argument(
        "--port", type=int, default=int(_env("PORT", str(DEFAULT_PORT)) or 0), help=f"env {ENV}PORT"
    )
    serve.add_argument(
        "--amqp-url",
        default=_env("AMQP_URL"),
        help=f"broker the service uses (env {ENV}AMQP_URL, which keeps its password out of "
        "`ps`); none: start an embedded RabbitMQ with a random password, no guest",
    )
    serve.add_argument(
        "--amqp-admin-url",
        default=_env("AMQP_ADMIN_URL"),
        help="the broker's management API as an administrator, http://USER:PASSWORD@HOST:PORT/"
        f" (env {ENV}AMQP_ADMIN_URL); every endpoint and client gets its own broker account "
        "through it. Default: --amqp-url's user on port 15672; the embedded broker's own",
    )
    serve.add_argument(
        "--public-amqp-url",
        default=_env("PUBLIC_AMQP_URL"),
        help=f"AMQP URL handed to endpoints and SDKs (env {ENV}PUBLIC_AMQP_URL)",
    )
    serve.add_argument("--db", default=_env("DB", str(_default_db())), help=db_help)
    serve.add_argument(
        "--queue-prefix",
        default=_env("QUEUE_PREFIX", DEFAULT_QUEUE_PREFIX),
        help="prefix of the per-task-group result queues",
    )
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
    serve.add_argument(
        "--metrics-token-file",
        default=_env("METRICS_TOKEN_FILE"),
        help="a private file (0600) with the bearer token GET /metrics requires; without it"
        f" /metrics answers loopback clients only (env {ENV}METRICS_TOKEN_FILE)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=int(_env("MAX_CONNECTIONS", str(Limits.max_connections)) or 0),
        help="open HTTP connections (also kept under the descriptor limit)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=float(_env("HEADER_TIMEOUT", str(Limits.header_timeout_s)) or 0),
        help="seconds a connection has to send a request's headers",
    )
    serve.add_argument(
        "--max-submission-bytes",
        type=_submission_size,
        default=_env("MAX_SUBMISSION_BYTES", str(Limits.max_submission_bytes)),
        metavar="SIZE",
        help="largest submission, function code plus every task's payload, in bytes or with a"
        " unit (10MiB, 10MB); larger ones get 413 TASK_PAYLOAD_TOO_LARGE"
        f" (env {ENV}MAX_SUBMISSION_BYTES; default 10MiB, at most"
        f" {MAX_SUBMISSION_CEILING // 2**20}MiB)",
    )

    client = sub.add_parser("create-client", help="create an OAuth2 client; prints its secret")
    client.add_argument("--db", default=_env("DB", str(_default_db())), help=db_help)
    client.add_argument("--name", default="", help="a display name")
    client.add_argument("--client-id", help="use this id (a UUID) instead of a new one")
    client.add_argument("--client-secret", help="use this secret instead of a random one")
    client.add_argument(
        "--username",
        help="the identity's username (local@domain; default <client_id>@clients.auth.globus.org)"
        ", what authentication policies match domains against",
    )
    return parser


def _submission_size(text: str) -> int:
    try:
        size = parse_size(text)
        Limits(max_submission_bytes=size)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return size


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    # SIGTERM while the embedded broker starts: unwind like Ctrl-C, so it is stopped again.
    raise KeyboardInterrupt


def _serve(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return _serve_until_stopped(args)
    except KeyboardInterrupt:
        return RET_OK


def _serve_until_stopped(args: argparse.Namespace) -> int:
    def settings(amqp_url: str, admin_url: str | None) -> Settings:
        return Settings(
            amqp_url=amqp_url,
            broker_admin_url=admin_url,
            db_path=args.db,
            public_amqp_url=args.public_amqp_url,
            queue_prefix=args.queue_prefix,
            metrics_token_file=args.metrics_token_file,
            limits=Limits(
                max_connections=args.max_connections,
                header_timeout_s=args.header_timeout,
                max_submission_bytes=args.max_submission_bytes,
            ),
        )

    log = logging.getLogger("webservice")
    with contextlib.ExitStack() as stack:
        amqp_url, admin_url = args.amqp_url, args.amqp_admin_url
        if amqp_url:
            log.info("using the AMQP broker given by --amqp-url")
        else:
            try:
                broker = stack.enter_context(embedded_broker(args.db))
            except BrokerStartError as e:
                print(f"compute-webservice: {e}", file=sys.stderr)
                return RET_BROKER
            amqp_url, admin_url = broker.url, broker.admin_url
        started = run(settings(amqp_url, admin_url), args.host, args.port, args.log_level.lower())
    return RET_OK if started else RET_START_FAILED


def _create_client(args: argparse.Namespace) -> int:
    store = Store.open(args.db)
    try:
        same = bool(
            args.client_id
            and args.client_secret
            and store.credentials.verify_client(args.client_id, args.client_secret)
        )
        cid, secret = store.credentials.create_client(
            args.name, args.client_id, args.client_secret, args.username
        )
        if not same:
            # A new secret also retires the client's broker password (`principals.py`); the
            # same one again (the appliance re-creates its client at every start) does not.
            store.principals.bump_if_known(client_user(cid))
    except ValueError as e:
        print(f"compute-webservice: {e}", file=sys.stderr)
        return RET_USAGE
    finally:
        store.close()
    print(json.dumps({"client_id": cid, "client_secret": secret}))
    return RET_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pika logs every connection step at INFO, and each failed reconnect as a handful of
    # ERRORs; the service logs one line per attempt itself.
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("pika.adapters").setLevel(logging.CRITICAL)
    if args.command == "serve":
        return _serve(args)
    return _create_client(args)


if __name__ == "__main__":
    sys.exit(main())
