"""Limits at the edge: how much a request, a submission and an AMQP header may carry.

Inert data, like `Settings` (which holds one `Limits`). The HTTP layer (`edge.py`) enforces the
transport limits, the request models (`models.py`) the shape limits and `dispatch.py` the
submission limits, each before anything is stored or published.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB

#: The hosted service's limit on one submission: function code plus payloads of every task.
MAX_SUBMISSION_BYTES = 10 * MiB

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

    #: Largest request body of a JSON route: a 10 MiB submission plus JSON overhead.
    max_body_bytes: int = 16 * MiB
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
