"""pika adapters: a reconnecting AMQP session that consumes tasks and publishes with confirms."""

from endpoint.amqp.session import AmqpSession, Outgoing, SessionEvents, with_port

__all__ = ["AmqpSession", "Outgoing", "SessionEvents", "with_port"]
