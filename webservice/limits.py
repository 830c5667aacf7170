"""Limits at the edge: how much a request, a submission and an AMQP header may carry.

Inert data, like `Settings` (which holds one `Limits`). The HTTP layer (`edge.py`) enforces the
transport limits, the request models (`models.py`) the shape limits and `dispatch.py` the
submission limits, each before anything is stored or published. The submission limit is
enforced twice: on the submit route's body before it is read or parsed (`submit_body_bytes`),
then exactly, on function code plus payloads, once the functions are known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB

#: The hosted service's limit on one submission: function code plus payloads of every task.
MAX_SUBMISSION_BYTES = 10 * MiB
#: The most `Limits.max_submission_bytes` may be set to: RabbitMQ's default max_message_size
#: before 4.0 (4.0 lowered it to 16 MiB), and a bound on what one request may make us buffer.
MAX_SUBMISSION_CEILING = 128 * MiB
#: The JSON around a submission's payloads (quotes, escapes, ids, the header-borne fields
#: capped below) is far smaller than this share of them for any client that sends payloads as
#: the SDK does (base64 text).
SUBMIT_BODY_OVERHEAD_DIVISOR = 8
SUBMIT_BODY_OVERHEAD_BYTES = 256 * KiB

#: RabbitMQ's default frame_max is 128 KiB, and all the headers of one message must fit in one
#: frame (a larger one makes the broker close the whole connection). These leave ample room.
MAX_RESOURCE_SPEC_BYTES = 16 * KiB
MAX_RESULT_SERIALIZERS_BYTES = 4 * KiB
#: All the headers of one task message, measured as pika encodes them.
MAX_HEADER_BYTES = 32 * KiB
#: Not a header, but it travels in a start command and names a user endpoint's directory tree.
MAX_USER_CONFIG_BYTES = 64 * KiB

#: JSON nesting allowed in any request body (metadata, configs); deeper is refused (422).
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class Limits:
    """Transport limits of one service instance."""

    #: Largest request body of a JSON route other than submit (a registered function's code).
    max_body_bytes: int = 16 * MiB
    #: Function code plus every task's payload of one submission; over it, 413
    #: TASK_PAYLOAD_TOO_LARGE (`compute-webservice serve --max-submission-bytes`).
    max_submission_bytes: int = MAX_SUBMISSION_BYTES
    #: Largest body of the OAuth2 form routes (a few short fields).
    max_form_bytes: int = 64 * KiB
    #: A connection must deliver a request's complete headers within this many seconds.
    header_timeout_s: float = 10.0
    #: Longest wait for the next chunk of a request body, and for the whole body.
    body_idle_timeout_s: float = 20.0
    body_timeout_s: float = 120.0
    #: Open HTTP connections; past it the oldest connection still sending headers is closed
    #: (also capped below the descriptor limit at start, so `accept` never runs out).
    max_connections: int = 1000
    #: Idle keep-alive connections are closed after this many seconds.
    keep_alive_s: float = 5.0
    #: Failed client authentications of one client id allowed before it is slowed down, and
    #: the longest delay (doubling from one second) imposed after that.
    free_auth_failures: int = 5
    max_auth_delay_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.max_submission_bytes <= MAX_SUBMISSION_CEILING:
            raise ValueError(
                f"max_submission_bytes must be between 1 and {MAX_SUBMISSION_CEILING} bytes,"
                f" not {self.max_submission_bytes}"
            )

    @property
    def submit_body_bytes(self) -> int:
        """Largest submit body read: the submission limit plus room for the JSON around it.

        A bigger body cannot hold a submission within the limit (from an SDK-like client), so
        it is refused as TASK_PAYLOAD_TOO_LARGE before it is read or parsed.
        """
        limit = self.max_submission_bytes
        return limit + limit // SUBMIT_BODY_OVERHEAD_DIVISOR + SUBMIT_BODY_OVERHEAD_BYTES


_SIZE = re.compile(r"(\d+)\s*(?:([kmg])(i?)b?|b)?", re.IGNORECASE)
#: Per unit prefix: (decimal, binary) multiplier.
_MULTIPLIERS = {"k": (10**3, 2**10), "m": (10**6, 2**20), "g": (10**9, 2**30)}


def parse_size(text: str) -> int:
    """``10485760``, ``10MiB`` (10 * 2**20), ``10MB`` (10**7), ``512KiB``... in bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r} (a number of bytes, or e.g. 10MiB, 10MB)")
    number, prefix = int(match[1]), (match[2] or "").lower()
    if not prefix:
        return number
    decimal, binary = _MULTIPLIERS[prefix]
    return number * (binary if match[3] else decimal)
