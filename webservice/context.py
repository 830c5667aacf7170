"""The running parts of one service instance, shared by routes and consumers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from webservice.settings import Settings
from webservice.store import Store

if TYPE_CHECKING:
    from webservice.amqp import AmqpLink
    from webservice.dispatch import Dispatcher
    from webservice.forwarder import ResultForwarder
    from webservice.principals import Principals
    from webservice.topology import Topology


@dataclass
class Services:
    settings: Settings
    store: Store
    link: AmqpLink
    topology: Topology
    dispatcher: Dispatcher
    forwarder: ResultForwarder
    principals: Principals


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
