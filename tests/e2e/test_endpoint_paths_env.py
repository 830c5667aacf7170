"""The official 4.16-4.19 knobs on real endpoints, driven by the official SDK 4.19.

A single-user endpoint configured with `configure --core-config`, started with only the
funcX-era `FUNCX_SDK_CLIENT_ID/SECRET`, with `debug`, `public` and a `paths:` block; and a core
endpoint configured with every file option whose user endpoints take their directory and log
from GLOBUS_COMPUTE_ENDPOINT_DIR / GLOBUS_COMPUTE_LOG_PATH in user_environment.yaml. Both
publish GLOBUS_COMPUTE_ENDPOINT_NAME, _ENDPOINT_DIR and _LOG_PATH to `endpoint_setup` and to
the workers, where a task reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

from devstack.stack import Stack
from tests.e2e.conftest import SdkRunner
from tests.e2e.test_cli_lifecycle import run_cli

NAMES = ("GLOBUS_COMPUTE_ENDPOINT_NAME", "GLOBUS_COMPUTE_ENDPOINT_DIR", "GLOBUS_COMPUTE_LOG_PATH")

PRELUDE = """
import json
from globus_compute_sdk import Executor
def where():
    import os
    return {{n: os.environ.get(n) for n in {names!r}}}
with Executor(endpoint_id={ep!r}{extra}) as ex:
    print(json.dumps(ex.submit(where).result(timeout=120)))
"""


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_a_single_user_endpoint_honours_paths_debug_public_and_funcx_credentials(
    stack: Stack, run_sdk: SdkRunner, tmp_path: Path
) -> None:
    user = tmp_path / "user"
    env = stack.client_env(user)
    env["FUNCX_SDK_CLIENT_ID"] = env.pop("GLOBUS_COMPUTE_CLIENT_ID")
    env["FUNCX_SDK_CLIENT_SECRET"] = env.pop("GLOBUS_COMPUTE_CLIENT_SECRET")
    work, log = tmp_path / "work", tmp_path / "logs" / "single.log"
    setup_out = tmp_path / "setup.env"
    core = _write(
        tmp_path / "core.yaml",
        "engine:\n  type: ProcessPoolEngine\n  max_workers: 1\nheartbeat_period: 5\n"
        f"debug: true\npublic: true\npaths:\n  endpoint_dir: {work}\n  endpoint_log: {log}\n"
        "endpoint_setup: echo $GLOBUS_COMPUTE_ENDPOINT_NAME $GLOBUS_COMPUTE_ENDPOINT_DIR"
        f" $GLOBUS_COMPUTE_LOG_PATH > {setup_out}\n",
    )
    done = run_cli(env, "configure", "--core-config", core, "single")
    assert done.returncode == 0, done.stderr
    started = run_cli(env, "start", "--detach", "single")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "FUNCX_SDK_CLIENT_ID is deprecated" in started.stderr
        endpoint_id = json.loads((user / "single" / "endpoint.json").read_text())["endpoint_id"]
        stack.wait_online(endpoint_id, 60)
        seen = run_sdk(PRELUDE.format(names=NAMES, ep=endpoint_id, extra=""))
        expected = ["single", str(user / "single"), str(log)]
        assert [seen[n] for n in NAMES] == expected
        assert setup_out.read_text().split() == expected
        assert stack.get(f"/v2/endpoints/{endpoint_id}")["public"] is True
        assert " DEBUG " in log.read_text()
        assert (work / "journal.db").exists() and not (user / "single" / "endpoint.log").exists()
    finally:
        stopped = run_cli(env, "stop", "single", "--timeout", "10")
    assert stopped.returncode == 0, stopped.stderr


TEMPLATE = """\
engine:
  type: ThreadPoolEngine
  max_workers: 1
heartbeat_period: 5
idle_heartbeats_soft: 0
display_name: {{ label|default('"paths-uep"') }}
"""
SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}}


def test_a_core_endpoints_user_endpoints_take_their_paths_from_the_environment(
    stack: Stack, run_sdk: SdkRunner, tmp_path: Path
) -> None:
    env = stack.client_env(stack.root / "user")
    uep_root, log_root = tmp_path / "ueps", tmp_path / "uep-logs"
    user_env = (
        f"GLOBUS_COMPUTE_USER_DIR: {stack.root / 'paths-uep-user'}\n"
        f"GLOBUS_COMPUTE_ENDPOINT_DIR: {uep_root}/$GLOBUS_COMPUTE_ENDPOINT_NAME\n"
        f"GLOBUS_COMPUTE_LOG_PATH: {log_root}/$GLOBUS_COMPUTE_ENDPOINT_NAME.log\n"
    )
    args = [
        "--multi-user", "true", "--contact-email", "ops@example.org",
        "--core-config", _write(tmp_path / "core.yaml", "heartbeat_period: 5\n"),
        "--template-config", _write(tmp_path / "t.j2", TEMPLATE),
        "--schema-config", _write(tmp_path / "s.json", json.dumps(SCHEMA)),
        "--user-env-config", _write(tmp_path / "e.yaml", user_env),
    ]  # fmt: skip
    done = run_cli(env, "configure", *args, "paths-core")
    assert done.returncode == 0, done.stderr
    config = stack.root / "user" / "paths-core" / "config.yaml"
    # As root, configure points at an example identity mapping; this test's user endpoints
    # run as the owner instead.
    lines = config.read_text().splitlines(keepends=True)
    config.write_text("".join(x for x in lines if "identity_mapping_config_path" not in x))
    manager = stack.start_endpoint("paths-core")
    try:
        cfg = {"label": "paths"}
        seen = run_sdk(
            PRELUDE.format(names=NAMES, ep=manager, extra=f", user_endpoint_config={cfg!r}")
        )
        name = seen["GLOBUS_COMPUTE_ENDPOINT_NAME"]
        assert name.startswith("uep.")
        assert seen["GLOBUS_COMPUTE_ENDPOINT_DIR"] == str(uep_root / name)
        assert seen["GLOBUS_COMPUTE_LOG_PATH"] == str(log_root / f"{name}.log")
        assert "user endpoint" in (log_root / f"{name}.log").read_text()
        assert (uep_root / name / "journal.db").exists()
        assert not (stack.root / "paths-uep-user" / name).exists()
    finally:
        stack.stop_endpoint("paths-core")
