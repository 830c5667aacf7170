"""The web service's OpenAPI schema, fuzzed with schemathesis: no input gets a 5xx.

Every operation is called with generated parameters and bodies, once as an anonymous caller
and once with a valid Compute token; a 5xx means a bug (bad input must be a 4xx naming the
field). The schema comes from the app in-process: the service serves no /openapi.json.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from devstack.testing import ApiClient, ServiceThread, service_settings
from webservice.app import create_app
from webservice.broker import PrivateRabbit
from webservice.settings import Settings

pytestmark = pytest.mark.integration

#: Per operation and per caller; about 25 operations, so this bounds the whole run.
MAX_EXAMPLES = 25

# Building the app starts nothing (the lifespan does), so the schema is read at import time.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(amqp_url="amqp://unused", db_path=":memory:")).openapi()
)


@pytest.fixture(scope="module")
def service(
    rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceThread]:
    db = tmp_path_factory.mktemp("ws-fuzz") / "ws.db"
    with ServiceThread(service_settings(rabbit, db)) as svc:
        yield svc


@pytest.fixture(scope="module")
def identity(service: ServiceThread) -> Iterator[ApiClient]:
    with service.new_identity("fuzzer") as api:
        # Something of its own to find, so owned-resource paths are exercised too.
        api.register_endpoint()
        api.register_function()
        yield api


def _no_server_error(case: schemathesis.Case[Any], base_url: str, headers: dict[str, str]) -> None:
    response = case.call(base_url=base_url, headers=headers, timeout=30)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
        f"\n{case.as_curl_command(headers=headers)}"
    )


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_anonymous_caller_never_gets_a_server_error(
    case: schemathesis.Case[Any], service: ServiceThread
) -> None:
    _no_server_error(case, service.url, {})


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_authenticated_caller_never_gets_a_server_error(
    case: schemathesis.Case[Any], service: ServiceThread, identity: ApiClient
) -> None:
    _no_server_error(case, service.url, {"Authorization": f"Bearer {identity.token}"})
