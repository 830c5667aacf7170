"""Per-user Python environments (issue 15): the DEFAULT core endpoint template, as `configure`
writes it, run by OUR manager; the official SDK 4.19 submits through our web service.

A `requirements` option gets the submitter's workers a uv environment with those packages,
built once per (Python minor, SDK version, requirements) under the user's Compute directory
and reused by every later user endpoint with the same key; a bad requirements string fails
the tasks with uv's own error.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.stack import Stack
from endpoint.errors import UserEnvError
from endpoint.manager import defaults
from endpoint.manager.userenv import CACHE_DIR_NAME, MARKER, uv_binary, worker_wheel
from tests.e2e.conftest import SdkRunner
from webservice.commands import uep_id

MANAGER = "ours-manager-uvenv"

PRELUDE = """
import json
from globus_compute_sdk import Executor
EP = {ep!r}
def probe(module=None):
    import sys
    found = None
    if module:
        try:
            found = __import__(module).__file__
        except ImportError as e:
            found = "ImportError: " + str(e)
    return {{"prefix": sys.prefix, "python": "%d.%d" % sys.version_info[:2], "module": found}}
def run(cfg, *args):
    try:
        with Executor(endpoint_id=EP, user_endpoint_config=cfg) as ex:
            return {{"ok": ex.submit(probe, *args).result(timeout=300)}}
    except Exception as e:
        return {{"error": type(e).__name__, "text": str(e)}}
"""


def user_dir(stack: Stack) -> Path:
    return stack.root / "uvenv-user"


def env_root(stack: Stack) -> Path:
    return user_dir(stack) / CACHE_DIR_NAME


def other_python() -> Path:
    """An interpreter of another Python minor than the endpoint's (3.12 preferred)."""
    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    found: dict[str, str] = {}
    for pattern in (
        "/usr/bin/python3.1?",
        "/usr/local/bin/python3.1?",
        "/root/.pyenv/versions/3.1*/bin/python3.1?",
    ):
        for path in sorted(glob.glob(pattern)):
            minor = path.rsplit("python", 1)[1]
            if minor != own and int(minor.split(".")[1]) >= 11:
                found.setdefault(minor, path)
    managed = subprocess.run(
        [uv_binary(), "python", "find", "--managed-python", "3.12"],
        capture_output=True, text=True, check=False,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )  # fmt: skip
    if managed.returncode == 0 and "3.12" not in found:
        found["3.12"] = managed.stdout.strip()  # as tools/warm-uv-cache installs it
    if not found:
        pytest.fail(
            f"no Python minor other than {own} here: install one "
            "(tools/warm-uv-cache does, with uv)"
        )
    return Path(found.get("3.12") or sorted(found.values())[0])


def uv(*args: str | Path) -> None:
    proc = subprocess.run(
        [uv_binary(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "UV_OFFLINE": "1", "UV_PYTHON_DOWNLOADS": "never"},
    )
    assert proc.returncode == 0, (
        f"uv {args[:2]} failed (offline: tools/warm-uv-cache fills uv's cache):\n{proc.stderr}"
    )


def warm_cache() -> str:
    """uv's cache of this user, as tools/warm-uv-cache filled it."""
    found = subprocess.run(
        [uv_binary(), "cache", "dir"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "UV_CACHE_DIR"},
    )
    return found.stdout.strip()


@pytest.fixture(scope="module")
def sdk_on_other_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official SDK 4.19 installed for another Python minor: a submitter on that Python."""
    venv = tmp_path_factory.mktemp("sdk-other-python") / "venv"
    uv("venv", "--no-config", "--quiet", "--python", other_python(), venv)
    uv(
        "pip",
        "install",
        "--no-config",
        "--quiet",
        "--python",
        venv / "bin" / "python",
        "globus-compute-sdk==4.19.0",
    )
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def manager(stack: Stack) -> str:
    try:
        uv_binary()
        worker_wheel()
    except UserEnvError as e:
        pytest.fail(f"{e} (uv is a dependency: pip install -e .; then tools/warm-uv-cache)")
    ep_dir = stack.configure_endpoint(
        MANAGER, f"display_name: {MANAGER}\nheartbeat_period: 5\nemail: tester@example.org\n"
    )
    (ep_dir / "user_config_template.yaml.j2").write_text(defaults.USER_TEMPLATE)
    (ep_dir / "user_config_schema.json").write_text(json.dumps(defaults.USER_SCHEMA))
    # As root the manager starts user endpoints with a clean environment: the user's Compute
    # directory (where the environments are cached) is the test's, and uv, like the test,
    # has no network here: it installs from its cache (tools/warm-uv-cache fills it).
    # The other Python minor is on PATH, last, where uv finds it. The user endpoints run as
    # this test's user: they may use the cache it filled (instead of a private one of theirs).
    path = f"/usr/local/bin:/usr/bin:/bin:{Path(sys.executable).parent}:{other_python().parent}"
    (ep_dir / "user_environment.yaml").write_text(
        f"GLOBUS_COMPUTE_USER_DIR: {user_dir(stack)}\nUV_OFFLINE: 1\nPATH: {path}\n"
        f"UV_CACHE_DIR: {warm_cache()}\n"
    )
    return stack.start_endpoint(MANAGER)


def nonce() -> str:
    return uuid.uuid4().hex[:8]


def submit(run_sdk: SdkRunner, ep: str, cfg: dict[str, Any], module: str | None = None) -> Any:
    args = f", {module!r}" if module else ""
    return run_sdk(PRELUDE.format(ep=ep) + f"\nprint(json.dumps(run({cfg!r}{args})))", 420)


def ok(run_sdk: SdkRunner, ep: str, cfg: dict[str, Any], module: str | None = None) -> Any:
    out = submit(run_sdk, ep, cfg, module)
    assert "ok" in out, out
    return out["ok"]


def marker(prefix: str) -> dict[str, Any]:
    return dict(json.loads((Path(prefix) / MARKER).read_text()))


def test_requirements_get_a_private_uv_environment_that_a_second_user_endpoint_reuses(
    manager: str, run_sdk: SdkRunner, stack: Stack
) -> None:
    reqs = "six\n"
    first = ok(run_sdk, manager, {"requirements": reqs, "nonce": nonce()}, "six")
    prefix = Path(first["prefix"])
    assert prefix.parent == env_root(stack) and prefix.name.startswith("py3.11-sdk4.19.0-")
    assert first["module"].startswith(str(prefix)), first
    assert (env_root(stack).stat().st_mode & 0o777) == 0o700
    assert (prefix.stat().st_mode & 0o777) == 0o700
    built = marker(first["prefix"])
    assert built["spec"]["requirements"] == "six" and built["spec"]["sdk"] == "4.19.0"
    inode = prefix.stat().st_ino

    # Another user endpoint (another config), the same key: the environment is reused as is.
    second = ok(run_sdk, manager, {"requirements": reqs, "nonce": nonce()}, "six")
    assert second["prefix"] == first["prefix"]
    assert marker(second["prefix"]) == built and prefix.stat().st_ino == inode


def test_other_requirements_get_another_environment(
    manager: str, run_sdk: SdkRunner, stack: Stack
) -> None:
    cfg = {"requirements": "tomli-w", "nonce": nonce()}
    tomli = ok(run_sdk, manager, cfg, "tomli_w")
    assert tomli["module"].startswith(tomli["prefix"]), tomli
    assert Path(tomli["prefix"]).parent == env_root(stack)
    other = ok(run_sdk, manager, {"requirements": "tomli-w", "nonce": nonce()}, "six")
    assert other["prefix"] == tomli["prefix"]
    assert other["module"].startswith("ImportError"), other  # six is the other env's


def rendered_config(stack: Stack, manager: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The config the manager rendered for that user endpoint, as its status reports it."""
    uep = uep_id(manager, stack.client_id, cfg)
    deadline = time.monotonic() + 30
    while "config_raw" not in (details := stack.get(f"/v2/endpoints/{uep}/status")["details"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return dict(yaml.safe_load(details["config_raw"]))


def test_without_requirements_workers_run_in_the_endpoints_own_python(
    manager: str, run_sdk: SdkRunner, stack: Stack
) -> None:
    cfg = {"nonce": nonce()}
    out = ok(run_sdk, manager, cfg)
    # The submitter's Python minor and SDK are the endpoint's: no environment to build.
    assert Path(out["prefix"]).resolve() == Path(sys.prefix).resolve()
    rendered = rendered_config(stack, manager, cfg)
    assert (rendered["idle_heartbeats_soft"], rendered["idle_heartbeats_hard"]) == (10, 5760)
    assert not rendered["engine"]["provider"]["worker_init"]


def test_a_submitter_may_set_the_idle_heartbeats(
    manager: str, run_sdk: SdkRunner, stack: Stack
) -> None:
    cfg = {"idle_heartbeats_soft": 3, "idle_heartbeats_hard": 100, "nonce": nonce()}
    ok(run_sdk, manager, cfg)
    rendered = rendered_config(stack, manager, cfg)
    assert (rendered["idle_heartbeats_soft"], rendered["idle_heartbeats_hard"]) == (3, 100)


def test_bad_requirements_fail_the_tasks_with_uvs_error(
    manager: str, run_sdk: SdkRunner, stack: Stack
) -> None:
    bad = "no-such-package-compute-endpoint-test==9.9.9"
    out = submit(run_sdk, manager, {"requirements": bad, "nonce": nonce()})
    assert "error" in out, out
    assert "cannot build the Python environment" in out["text"], out
    assert "no-such-package-compute-endpoint-test" in out["text"], out
    assert "No solution found" in out["text"] or "not found" in out["text"], out
    # Nothing half-built is left to be mistaken for an environment.
    assert all((p / MARKER).exists() for p in env_root(stack).iterdir() if p.is_dir())


def test_a_submitter_on_another_python_minor_gets_workers_of_that_minor(
    manager: str, stack: Stack, sdk_on_other_python: Path
) -> None:
    """The user endpoint runs the endpoint's Python; its workers run the submitter's."""
    snippet = (
        PRELUDE.format(ep=manager)
        + f"""
print(json.dumps(run({{"requirements": "six", "nonce": {nonce()!r}}}, "six")))
"""
    )
    proc = subprocess.run(
        [str(sdk_on_other_python), "-c", textwrap.dedent(snippet)],
        env=stack.client_env(stack.root / "sdk-user-other-python"),
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "ok" in out, out
    minor = other_python().name.removeprefix("python")
    prefix = Path(out["ok"]["prefix"])
    assert out["ok"]["python"] == minor != f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert prefix.parent == env_root(stack) and prefix.name.startswith(f"py{minor}-sdk4.19.0-")
    assert out["ok"]["module"].startswith(str(prefix))
    assert marker(str(prefix))["python_version"].startswith(minor + ".")
