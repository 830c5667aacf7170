"""Scope -> resource-server grouping for the token route."""

from __future__ import annotations

import pytest

from webservice.errors import OAuthError
from webservice.scopes import AUTH_RS, COMPUTE_RS, COMPUTE_SCOPE, group_by_resource_server


def test_the_compute_scope_is_funcx_service() -> None:
    assert group_by_resource_server(COMPUTE_SCOPE) == {COMPUTE_RS: [COMPUTE_SCOPE]}


def test_repeated_scopes_collapse_to_one_token_request() -> None:
    assert group_by_resource_server(f"{COMPUTE_SCOPE} {COMPUTE_SCOPE}") == {
        COMPUTE_RS: [COMPUTE_SCOPE]
    }


def test_auth_scopes_group_together_in_request_order() -> None:
    scopes = f"openid urn:globus:auth:scope:auth.globus.org:manage_projects {COMPUTE_SCOPE} email"
    grouped = group_by_resource_server(scopes)
    assert list(grouped) == [AUTH_RS, COMPUTE_RS]
    assert grouped[AUTH_RS] == [
        "openid",
        "urn:globus:auth:scope:auth.globus.org:manage_projects",
        "email",
    ]


def test_another_services_scope_url_names_its_resource_server() -> None:
    scope = "https://auth.globus.org/scopes/abc-123/all"
    assert group_by_resource_server(scope) == {"abc-123": [scope]}


@pytest.mark.parametrize("scope", ["", "   ", "bogus", "https://example.org/scopes/x/all"])
def test_empty_or_unknown_scopes_are_invalid_scope(scope: str) -> None:
    with pytest.raises(OAuthError) as err:
        group_by_resource_server(scope)
    assert err.value.error == "invalid_scope"
