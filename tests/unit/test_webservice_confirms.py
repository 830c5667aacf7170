"""Publisher-confirm bookkeeping: single, multiple and out-of-order confirms."""

from __future__ import annotations

import asyncio

from webservice.amqp import _Confirms
from webservice.errors import BrokerUnavailable


def _futures(n: int) -> tuple[_Confirms, list[asyncio.Future[None]]]:
    loop = asyncio.new_event_loop()
    confirms = _Confirms()
    futures = [loop.create_future() for _ in range(n)]
    for fut in futures:
        confirms.add(fut)
    loop.close()
    return confirms, futures


def test_a_multiple_ack_settles_every_tag_up_to_it() -> None:
    confirms, futs = _futures(5)
    confirms.settle(3, multiple=True, error=None)
    assert [f.done() for f in futs] == [True, True, True, False, False]
    confirms.settle(5, multiple=True, error=None)
    assert all(f.done() and f.exception() is None for f in futs)
    assert not confirms.waiting


def test_single_confirms_may_come_out_of_order() -> None:
    confirms, futs = _futures(3)
    confirms.settle(2, multiple=False, error=None)
    assert [f.done() for f in futs] == [False, True, False]
    confirms.settle(3, multiple=True, error=None)
    assert all(f.done() for f in futs)


def test_a_nack_fails_its_publishes_and_a_lost_channel_fails_the_rest() -> None:
    confirms, futs = _futures(3)
    confirms.settle(1, multiple=False, error=BrokerUnavailable("nacked"))
    assert isinstance(futs[0].exception(), BrokerUnavailable)
    confirms.fail_all(BrokerUnavailable("gone"))
    assert all(isinstance(f.exception(), BrokerUnavailable) for f in futs)
