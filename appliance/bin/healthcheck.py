#!/opt/compute-endpoint/bin/python
"""The image's HEALTHCHECK: healthy only when every program of the role does its job.

- endpoint: `compute-endpoint health NAME`: the process is alive, its task and result AMQP
  sessions are connected and its last heartbeat is fresh (a live pid alone is not health);
- webservice: its HTTP API answers;
- all-in-one: the broker accepts connections, and both of the above.

The entrypoint records the role and its settings in `$APPLIANCE_RUN_DIR/appliance.json`,
because a health check runs with the container's environment, not with the entrypoint's.
Exit 0 healthy, 1 unhealthy (Docker's convention); one line per check on stdout.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

from appliance_paths import run_dir  # beside this script (symlinks resolved)

TIMEOUT_S = 5.0


def check_endpoint(cfg: dict[str, Any]) -> tuple[bool, str]:
    proc = subprocess.run(
        ["compute-endpoint", "health", cfg["endpoint_name"]],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip().removeprefix("unhealthy: ")


def check_webservice(cfg: dict[str, Any]) -> tuple[bool, str]:
    url = f"{cfg['webservice_url']}/v2/version"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            return resp.status == 200, f"web service answers at {url}"
    except (urllib.error.URLError, OSError) as e:
        return False, f"web service at {url}: {e}"


def check_broker(cfg: dict[str, Any]) -> tuple[bool, str]:
    port = int(cfg["broker_port"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S):
            return True, f"broker accepts connections on port {port}"
    except OSError as e:
        return False, f"broker on port {port}: {e}"


CHECKS = {
    "endpoint": [check_endpoint],
    "webservice": [check_webservice],
    "all-in-one": [check_broker, check_webservice, check_endpoint],
}


def main() -> int:
    where = run_dir()
    try:
        cfg = json.loads((where / "appliance.json").read_text())
    except (OSError, ValueError) as e:
        print(f"unhealthy: no appliance settings in {where} ({e})")
        return 1
    healthy = True
    for check in CHECKS.get(cfg.get("role", ""), []):
        ok, line = check(cfg)
        print(("ok: " if ok else "unhealthy: ") + line)
        healthy = healthy and ok
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
