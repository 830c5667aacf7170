#!/opt/compute-endpoint/bin/python
"""Print the environment an SDK on the host needs to use this appliance (KEY=VALUE lines).

    docker exec CONTAINER compute-appliance-env >> "$GITHUB_ENV"      # a CI job
    eval "$(docker exec CONTAINER compute-appliance-env --export)"      # a shell

GLOBUS_SDK_ENVIRONMENT / GLOBUS_SDK_SERVICE_URL_AUTH point the official SDK at the local web
service, GLOBUS_COMPUTE_CLIENT_ID / _SECRET are the client the endpoint registered with (an
endpoint only takes tasks from its owner), ENDPOINT_ID is the endpoint's id. Only what this
container knows is printed; exit 1 if that is nothing useful yet (still starting).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from appliance_paths import run_dir  # beside this script (symlinks resolved)


def _load(path: str | Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def client_env() -> dict[str, str]:
    settings = _load(run_dir() / "appliance.json")
    env: dict[str, str] = {}
    url = str(settings.get("service_url") or "").rstrip("/")
    if url:
        env["GLOBUS_SDK_ENVIRONMENT"] = "local"
        env["GLOBUS_SDK_SERVICE_URL_AUTH"] = f"{url}/"
    creds = _load(settings["credentials"]) if settings.get("credentials") else {}
    if creds.get("client_id") and creds.get("client_secret"):
        env["GLOBUS_COMPUTE_CLIENT_ID"] = str(creds["client_id"])
        env["GLOBUS_COMPUTE_CLIENT_SECRET"] = str(creds["client_secret"])
    endpoint = _load(Path(settings.get("endpoint_dir", "/nonexistent")) / "endpoint.json")
    if endpoint.get("endpoint_id"):
        env["ENDPOINT_ID"] = str(endpoint["endpoint_id"])
    return env


def main(argv: list[str]) -> int:
    export = argv == ["--export"]
    if argv and not export:
        print("usage: compute-appliance-env [--export]", file=sys.stderr)
        return 2
    env = client_env()
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}" if export else f"{key}={value}")
    return 0 if env else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
