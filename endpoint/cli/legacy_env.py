"""The funcX-era names of the client credentials, still set by older service-account setups.

`FUNCX_SDK_CLIENT_ID` and `FUNCX_SDK_CLIENT_SECRET` mean what `GLOBUS_COMPUTE_CLIENT_ID` and
`GLOBUS_COMPUTE_CLIENT_SECRET` mean. Ignoring them would turn a service account's unattended
start into an interactive login that waits for a person, so they are adopted, with a
deprecation warning; the new names win when both are set. Everything the command starts
(a detached endpoint, a systemd unit's environment file) then sees only the new names.
"""

from __future__ import annotations

from collections.abc import MutableMapping

#: Legacy name -> current name.
RENAMED = {
    "FUNCX_SDK_CLIENT_ID": "GLOBUS_COMPUTE_CLIENT_ID",
    "FUNCX_SDK_CLIENT_SECRET": "GLOBUS_COMPUTE_CLIENT_SECRET",
}


def adopt(environ: MutableMapping[str, str]) -> list[str]:
    """Copy each set legacy variable to its current name (unless that is set) and remove it;
    return one deprecation warning per legacy variable found."""
    warnings = []
    for old, new in RENAMED.items():
        value = environ.pop(old, None)
        if value is None:
            continue
        if environ.get(new):
            warnings.append(f"{old} is deprecated and ignored because {new} is set")
            continue
        environ[new] = value
        warnings.append(f"{old} is deprecated; set {new} instead (used as {new} this time)")
    return warnings
