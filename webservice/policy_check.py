"""Enforcing an endpoint's authentication policy on a submit, before anything is stored.

Applies to every submitter, the endpoint's owner included, as Globus Auth policies do. A
refusal is a 403 `AUTHENTICATION_POLICY_VIOLATION` (the SDK raises it as a GlobusAPIError).
"""

from __future__ import annotations

import logging
import time

from webservice.errors import Forbidden
from webservice.security import Caller
from webservice.store import Store
from webservice.store.endpoints import Endpoint

log = logging.getLogger(__name__)

CODE = "AUTHENTICATION_POLICY_VIOLATION"


def check_policy(
    store: Store, caller: Caller, endpoint: Endpoint, now: float | None = None
) -> None:
    """Raise Forbidden unless `caller` complies with the endpoint's authentication policy."""
    policy_id = endpoint.registration.get("authentication_policy")
    if not policy_id:
        return
    policy = store.policies.get(str(policy_id))
    reason: str | None
    if policy is None:
        # Fail closed: an endpoint registered with a policy never runs tasks without it.
        reason = f"its authentication policy {policy_id} no longer exists"
    else:
        reason = policy.domain_refusal(caller.username) or _too_old(
            store, caller, policy.authentication_assurance_timeout, now
        )
    if reason is None:
        return
    log.info(
        "submit to endpoint %s by %s refused by its authentication policy: %s",
        endpoint.endpoint_id,
        caller.identity,
        reason,
    )
    raise Forbidden(f"endpoint {endpoint.endpoint_id} refuses this identity: {reason}", code=CODE)


def _too_old(store: Store, caller: Caller, timeout_s: int | None, now: float | None) -> str | None:
    if timeout_s is None or caller.token is None:
        return None
    age = (time.time() if now is None else now) - store.credentials.logged_in_at(caller.token)
    if age <= timeout_s:
        return None
    return (
        f"the login behind this token is {int(age)} s old; the policy accepts logins of at most"
        f" {timeout_s} s (log in again)"
    )
