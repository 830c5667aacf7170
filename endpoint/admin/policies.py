"""`configure`'s policy creation: POST the policy to the service, then write its id.

The policy is created before anything is written, with a token got the way `start` gets one
(client credentials from GLOBUS_COMPUTE_CLIENT_ID/SECRET, else the stored login). A failure to
create writes nothing; a failure to write afterwards deletes the policy again (best effort).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from endpoint.admin import configure
from endpoint.admin.auth import LoginPrompt
from endpoint.errors import EndpointError, EndpointExists
from endpoint.host.dirs import has_config, user_dir, validate_name

log = logging.getLogger(__name__)


class PolicyService(Protocol):
    def create_policy(self, policy: dict[str, Any]) -> dict[str, Any]: ...

    def delete_policy(self, policy_id: str) -> None: ...


def _default_service(prompt: LoginPrompt | None) -> PolicyService:
    from endpoint.admin.register import service_for  # globus_sdk only when creating

    return service_for(None, prompt)


def configure_with_policy(
    name: str,
    opts: configure.Options,
    policy: dict[str, Any] | None,
    prompt: LoginPrompt | None,
    service_factory: Callable[[LoginPrompt | None], PolicyService] | None = None,
) -> tuple[configure.Created, str | None]:
    """`configure.configure`, creating `policy` (Globus Auth's document) first when given;
    returns what was written and the id of the policy created (None: none was)."""
    if policy is None:
        return configure.configure(name, opts), None
    # Checked here too, so an existing endpoint does not leave an orphan policy behind.
    ep_dir = user_dir() / validate_name(name)
    if has_config(ep_dir):
        raise EndpointExists(f"endpoint {name!r} is already configured in {ep_dir}")
    service = (service_factory or _default_service)(prompt)
    policy_id = str(service.create_policy(policy)["id"])
    log.info("created authentication policy %s", policy_id)
    try:
        created = configure.configure(name, replace(opts, auth_policy=policy_id))
    except BaseException:
        try:
            service.delete_policy(policy_id)
        except EndpointError as e:
            log.warning("could not delete the unused policy %s: %s", policy_id, e)
        raise
    return created, policy_id
