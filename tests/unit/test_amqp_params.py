"""heartbeat_threshold becomes the AMQP connection's liveness bounds unless the URL sets them."""

from __future__ import annotations

from endpoint.amqp.session import connection_parameters


def test_threshold_sets_heartbeat_and_blocked_timeout() -> None:
    params = connection_parameters("amqp://u:p@127.0.0.1:5672/v", 120.0)
    assert params.heartbeat == 120 and params.blocked_connection_timeout == 120.0


def test_values_in_the_url_win() -> None:
    url = "amqp://u:p@127.0.0.1:5672/v?heartbeat=7&blocked_connection_timeout=9"
    params = connection_parameters(url, 120.0)
    assert params.heartbeat == 7 and params.blocked_connection_timeout == 9.0


def test_no_threshold_keeps_pika_defaults() -> None:
    params = connection_parameters("amqp://u:p@127.0.0.1:5672/v", None)
    assert params.blocked_connection_timeout is None
