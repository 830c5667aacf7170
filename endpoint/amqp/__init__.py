"""pika adapters: a reconnecting AMQP session that consumes tasks and publishes with confirms."""

from endpoint.amqp.session import (
    AmqpSession,
    MessageProperties,
    Outgoing,
    SessionEvents,
    with_port,
)

__all__ = ["AmqpSession", "MessageProperties", "Outgoing", "SessionEvents", "with_port"]
