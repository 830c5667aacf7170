#!/opt/compute-endpoint/bin/python
"""Render supervisord's config for a role, and the settings the HEALTHCHECK reads.

    render.py ROLE    (the entrypoint runs it with every setting exported)

The templates in $APPLIANCE_HOME/supervisor/ use supervisord's own `%(ENV_NAME)s` syntax;
they are expanded here rather than by supervisord, so that `supervisorctl` run later through
`docker exec` (with the container's env, not the entrypoint's) can read the same file.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

PROGRAMS = {
    "endpoint": ["endpoint"],
    "webservice": ["webservice"],
    "all-in-one": ["rabbitmq", "webservice", "endpoint"],
}

_ENV_REF = re.compile(r"%\(ENV_([A-Za-z_][A-Za-z0-9_]*)\)s")


def expand(text: str, env: dict[str, str]) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in env:
            raise SystemExit(f"render.py: ${name} is not set (used by the supervisord config)")
        return env[name].replace("%", "%%")  # supervisord expands %(...)s once more itself

    return _ENV_REF.sub(value, text)


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(role: str) -> None:
    env = dict(os.environ)
    home = Path(env["APPLIANCE_HOME"]) / "supervisor"
    run_dir = Path(env["APPLIANCE_RUN_DIR"])
    parts = [f"; rendered by the entrypoint for role {role}; edits are lost at the next start\n"]
    parts += [(home / f"{p}.conf").read_text() for p in ["supervisord", *PROGRAMS[role]]]
    write(run_dir / "supervisord.conf", expand("".join(parts), env))
    port = env.get("COMPUTE_WEBSERVICE_PORT") or env["WEBSERVICE_PORT"]
    local_url = f"http://localhost:{port}"
    settings = {
        "role": role,
        "endpoint_name": env["ENDPOINT_NAME"],
        "endpoint_dir": str(Path(env["GLOBUS_COMPUTE_USER_DIR"]) / env["ENDPOINT_NAME"]),
        "webservice_url": local_url,
        # What SDKs use: this container's service, or the one the endpoint was pointed at.
        "service_url": local_url if role != "endpoint" else env.get("COMPUTE_SERVICE_URL", ""),
        "credentials": env.get("APPLIANCE_CREDENTIALS", ""),
        "broker_port": int(env["BROKER_PORT"]),
    }
    write(run_dir / "appliance.json", json.dumps(settings, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in PROGRAMS:
        sys.exit(f"usage: render.py {{{','.join(PROGRAMS)}}}")
    main(sys.argv[1])
