"""Which resource server a requested OAuth2 scope belongs to.

globus-sdk's `ClientCredentialsAuthorizer` insists on exactly one token per resource server it
asked for, so requested scopes are grouped by resource server, in the order first requested.
"""

from __future__ import annotations

import re

from webservice.errors import OAuthError

COMPUTE_SCOPE = "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all"
COMPUTE_RS = "funcx_service"
AUTH_RS = "auth.globus.org"

_AUTH_SCOPES = {"openid", "profile", "email"}
_AUTH_URN_PREFIX = "urn:globus:auth:scope:auth.globus.org:"
# Globus names other services' scopes https://auth.globus.org/scopes/<resource server>/<name>.
_SCOPE_URL = re.compile(r"^https://auth\.globus\.org/scopes/([^/\s\[\]]+)/[^\s\[\]]+$")


def resource_server_of(scope: str) -> str:
    if scope == COMPUTE_SCOPE:
        return COMPUTE_RS
    if scope in _AUTH_SCOPES or scope.startswith(_AUTH_URN_PREFIX):
        return AUTH_RS
    match = _SCOPE_URL.match(scope)
    if match:
        return match.group(1)
    raise OAuthError("invalid_scope", f"unknown scope {scope!r}")


def group_by_resource_server(scope_string: str) -> dict[str, list[str]]:
    """`{resource_server: [scopes]}` in first-requested order, duplicates dropped."""
    grouped: dict[str, list[str]] = {}
    for scope in scope_string.split():
        scopes = grouped.setdefault(resource_server_of(scope), [])
        if scope not in scopes:
            scopes.append(scope)
    if not grouped:
        raise OAuthError("invalid_scope", "the 'scope' parameter names no scope")
    return grouped
