"""Shared fixtures: one private RabbitMQ per test session (never skipped: CI installs it)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from webservice.broker import PrivateRabbit


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbit]:
    broker = PrivateRabbit(tmp_path_factory.mktemp("rabbit"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def amqp_url(rabbit: PrivateRabbit) -> str:
    return rabbit.url


@pytest.fixture
def unique() -> str:
    """A short unique string for queue and endpoint names, so tests never share state."""
    return uuid.uuid4().hex[:10]
