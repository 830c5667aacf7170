"""Shared fixtures: one private RabbitMQ per test session (never skipped: CI installs it)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from webservice.broker import PrivateRabbit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def peer_python() -> Path:
    """The python of the official SDK/endpoint venv (test peers only; `make peers`).

    A missing peer fails the run: a comparison with the official code is never skipped.
    """
    path = Path(os.environ.get("PEER_PYTHON", ROOT / ".peer-venv" / "bin" / "python"))
    if not path.exists():
        pytest.fail(f"official peers missing at {path}: run `make peers`")
    return path


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
