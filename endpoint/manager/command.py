"""The manager's command messages (protocol.md §4.4): decoding and checks, no I/O.

A command is JSON with ``content_type: application/json`` and an integer ``timestamp`` within
`MAX_SKEW_S` of our clock (an old command may start a user endpoint nobody waits for any more).
The only command is ``cmd_start_endpoint``. A refused command raises `CommandRefused`; when
its `amqp_creds` could be read, `Refusal.creds` says where to report the refusal so that the
service can fail the tasks waiting for that user endpoint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from endpoint.amqp.queues import AmqpCreds
from endpoint.amqp.session import MessageProperties
from endpoint.errors import CommandRefused, ProtocolError
from endpoint.host.dirs import validate_name
from endpoint.manager.identity import identities_of

JSON = "application/json"
START = "cmd_start_endpoint"
KNOWN = frozenset({START})
MAX_SKEW_S = 180
_COMMAND = re.compile(r"^cmd_[A-Za-z][0-9A-Za-z_]{0,99}$")


class Refusal(CommandRefused):
    """A refused command, with the credentials its failure report goes to (if readable)."""

    def __init__(self, message: str, creds: AmqpCreds | None = None) -> None:
        super().__init__(message)
        self.creds = creds


@dataclass(frozen=True)
class StartRequest:
    name: str
    endpoint_id: str
    amqp_creds: AmqpCreds
    user_opts: dict[str, Any]
    user_runtime: dict[str, Any]
    identities: list[dict[str, Any]]
    username: str | None
    debug: bool = False

    def user_python_version(self) -> str | None:
        rt = self.user_runtime
        python = rt.get("python")
        version = python.get("version") if isinstance(python, dict) else None
        # `python.version` is the short "3.11.7"; the old `python_version` is sys.version.
        value = version or rt.get("python_version")
        return str(value) if value else None

    def user_sdk_version(self) -> str | None:
        value = self.user_runtime.get("globus_compute_sdk_version")
        return str(value) if value else None


def _creds_of(doc: Any) -> AmqpCreds | None:
    kwargs = doc.get("kwargs") if isinstance(doc, dict) else None
    creds = kwargs.get("amqp_creds") if isinstance(kwargs, dict) else None
    try:
        return AmqpCreds.parse(creds)
    except ProtocolError:
        return None


def _decode(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise Refusal(f"command body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise Refusal("command body is not a JSON object")
    return doc


def _check_envelope(props: MessageProperties, now: float, creds: AmqpCreds | None) -> None:
    if props.content_type != JSON:
        raise Refusal(f"command content_type is {props.content_type!r}, not {JSON!r}", creds)
    ts = props.timestamp
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise Refusal("command has no integer timestamp", creds)
    if abs(now - ts) > MAX_SKEW_S:
        raise Refusal(
            f"command is stale or from a skewed clock: its timestamp is {now - ts:+.0f}s "
            f"from ours (the limit is {MAX_SKEW_S}s)",
            creds,
        )


def _dict(kwargs: dict[str, Any], key: str, creds: AmqpCreds) -> dict[str, Any]:
    value = kwargs.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Refusal(f"cmd_start_endpoint: {key} must be a JSON object", creds)
    return value


def _start_request(doc: dict[str, Any], creds: AmqpCreds, debug: bool) -> StartRequest:
    kwargs = doc.get("kwargs")
    assert isinstance(kwargs, dict)  # _creds_of found the creds inside it
    try:
        name = validate_name(str(kwargs.get("name") or ""))
    except Exception as e:
        raise Refusal(f"cmd_start_endpoint: bad name: {e}", creds) from None
    identity_set = doc.get("globus_identity_set")
    if not isinstance(identity_set, list):
        raise Refusal("cmd_start_endpoint: globus_identity_set must be a list", creds)
    effective = doc.get("globus_effective_identity")
    username = doc.get("globus_username")
    return StartRequest(
        name=name,
        endpoint_id=creds.endpoint_id,
        amqp_creds=creds,
        user_opts=_dict(kwargs, "user_opts", creds),
        user_runtime=_dict(kwargs, "user_runtime", creds),
        identities=identities_of(
            identity_set,
            effective if isinstance(effective, str) else None,
            username if isinstance(username, str) else None,
        ),
        username=username if isinstance(username, str) else None,
        debug=debug,
    )


def parse(props: MessageProperties, body: bytes, now: float) -> StartRequest:
    """The start request a command carries; Refusal for anything else."""
    doc = _decode(body)
    creds = _creds_of(doc)
    _check_envelope(props, now, creds)
    command = doc.get("command")
    if not isinstance(command, str) or not _COMMAND.match(command):
        raise Refusal(f"malformed command name {str(command)[:100]!r}", creds)
    if command not in KNOWN:
        raise Refusal(f"unknown command {command!r}", creds)
    if creds is None:
        raise Refusal("cmd_start_endpoint: kwargs.amqp_creds is missing or malformed")
    return _start_request(doc, creds, bool(props.headers.get("debug")))


def redacted(body: bytes) -> str:
    """The command for a debug log, without its credentials."""
    try:
        doc = json.loads(body)
        kwargs = doc.get("kwargs") or {}
        if isinstance(kwargs, dict) and "amqp_creds" in kwargs:
            kwargs["amqp_creds"] = "<redacted>"
        return json.dumps(doc)[:4000]
    except (ValueError, AttributeError):
        return repr(body[:200])
