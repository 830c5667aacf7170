"""The CLI lifecycle against the real stack: detach, list, stop, stale pid files, remote lock,
restart and delete. Every endpoint here is a real `compute-endpoint` process tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devstack.stack import Stack, _bin

ENGINE = "engine:\n  type: ProcessPoolEngine\n  max_workers: 2\nheartbeat_period: 5\n"
HOOKS = (
    "endpoint_setup: echo set up > setup.ran\n"
    'endpoint_teardown: echo "torn down $GLOBUS_COMPUTE_ENDPOINT_ID" > teardown.ran\n'
)


def run_cli(
    env: dict[str, str], *args: str, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_bin("compute-endpoint"), *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The shared user dir of the stack's own endpoints."""
    return run_cli(stack.client_env(stack.root / "user"), *args)


def status(stack: Stack, name: str) -> str:
    rows = json.loads(cli(stack, "list", "--format", "json").stdout)
    return str(next(r["status"] for r in rows if r["name"] == name))


def test_list_shows_running_and_one_stop_suffices(stack: Stack) -> None:
    stack.configure_endpoint("life", "engine:\n  type: ThreadPoolEngine\n  max_workers: 1\n")
    endpoint_id = stack.start_endpoint("life")
    assert status(stack, "life") == "Running"
    again = cli(stack, "start", "life")
    assert again.returncode == 73 and "already running" in again.stderr
    stopped = cli(stack, "stop", "life")
    assert stopped.returncode == 0, stopped.stderr
    # Within its grace period, by itself: no SIGKILL (exit -9) and none reported.
    assert "killed" not in stopped.stderr
    assert stack.procs["endpoint:life"].wait(10) == 0
    assert status(stack, "life") == "Stopped"
    assert stack.get(f"/v2/endpoints/{endpoint_id}/status")["status"] == "offline"


# ---- our own user dir per test, with detached endpoints ----------------------------------


@pytest.fixture
def home(stack: Stack, tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """(env, user dir); every endpoint still running at the end is stopped."""
    user = tmp_path / "user"
    env = stack.client_env(user)
    yield env, user
    for ep in user.iterdir() if user.is_dir() else []:
        if (ep / "daemon.pid").exists():
            run_cli(env, "stop", ep.name, "--timeout", "10")


def configure(env: dict[str, str], user: Path, name: str, extra: str = "") -> Path:
    done = run_cli(env, "configure", name)
    assert done.returncode == 0, done.stderr
    (user / name / "config.yaml").write_text(ENGINE + extra)
    return user / name


def start_detached(stack: Stack, env: dict[str, str], name: str, *flags: str) -> tuple[str, int]:
    started = run_cli(env, "start", "--detach", name, *flags)
    assert started.returncode == 0, started.stdout + started.stderr
    ep_dir = Path(env["GLOBUS_COMPUTE_USER_DIR"]) / name
    endpoint_id = json.loads((ep_dir / "endpoint.json").read_text())["endpoint_id"]
    assert endpoint_id in started.stdout
    stack.wait_online(endpoint_id, 30)
    return endpoint_id, int((ep_dir / "daemon.pid").read_text())


def listed(env: dict[str, str]) -> dict[str, str]:
    done = run_cli(env, "list", "--format", "json")
    return {r["name"]: r["status"] for r in json.loads(done.stdout)}


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_detach_list_and_one_stop_take_down_the_whole_tree(
    stack: Stack, home: tuple[dict[str, str], Path]
) -> None:
    env, user = home
    ep = configure(env, user, "detached", HOOKS)
    endpoint_id, pid = start_detached(stack, env, "detached")
    assert listed(env) == {"detached": "Running"}
    assert (ep / "setup.ran").exists() and not (ep / "teardown.ran").exists()
    daemon = psutil.Process(pid)
    assert os.getsid(pid) != os.getsid(0), "the daemon left our session"
    assert os.getpgid(pid) == pid, "and leads its own process group"
    assert daemon.ppid() != os.getpid()
    deadline = time.monotonic() + 30
    while len(daemon.children(recursive=True)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    tree = [pid] + [c.pid for c in daemon.children(recursive=True)]
    assert len(tree) >= 3, "two pool workers"
    assert "Endpoint" in " ".join(daemon.cmdline()) or "compute-endpoint" in daemon.name()

    stopped = run_cli(env, "stop", "detached")
    assert stopped.returncode == 0, stopped.stderr
    # Within its grace period, by itself: nothing of its tree needed a SIGKILL.
    assert "is now stopped" in stopped.stdout and "killed" not in stopped.stderr
    assert alive(tree) == []
    assert not (ep / "daemon.pid").exists()
    assert (ep / "teardown.ran").read_text().strip() == f"torn down {endpoint_id}"
    assert listed(env) == {"detached": "Stopped"}
    assert stack.get(f"/v2/endpoints/{endpoint_id}/status")["status"] == "offline"
    log = (ep / "endpoint.log").read_text()
    assert "detached; daemon pid" in log and "endpoint_teardown" in log


def kill_hard(pid: int) -> None:
    """As a crash or a reboot would: no cleanup at all."""
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive([pid]) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_stale_pid_file_is_cleaned_by_start_and_by_stop(
    stack: Stack, home: tuple[dict[str, str], Path]
) -> None:
    env, user = home
    ep = configure(env, user, "crashy")
    endpoint_id, pid = start_detached(stack, env, "crashy")
    kill_hard(pid)
    assert (ep / "daemon.pid").exists()
    assert listed(env) == {"crashy": "Disconnected"}

    restarted = run_cli(env, "start", "--detach", "crashy")
    assert restarted.returncode == 0, restarted.stderr
    assert "had not shut down cleanly" in restarted.stderr
    assert listed(env) == {"crashy": "Running"}
    stack.wait_online(endpoint_id, 30)

    kill_hard(int((ep / "daemon.pid").read_text()))
    stopped = run_cli(env, "stop", "crashy")
    assert stopped.returncode == 0
    assert "stale pid file" in stopped.stdout
    assert listed(env) == {"crashy": "Stopped"}


def test_stop_remote_locks_the_endpoint_so_the_next_start_exits_69(
    stack: Stack, home: tuple[dict[str, str], Path]
) -> None:
    env, user = home
    configure(env, user, "locked")
    start_detached(stack, env, "locked")
    stopped = run_cli(env, "stop", "--remote", "locked")
    assert stopped.returncode == 0, stopped.stderr
    assert "locked at the service" in stopped.stdout and "is now stopped" in stopped.stdout
    again = run_cli(env, "start", "locked")
    assert again.returncode == 69, again.stderr
    assert "423" in again.stderr and "locked" in again.stderr
    assert listed(env) == {"locked": "Stopped"}


def test_restart_detached_keeps_the_endpoint_id(
    stack: Stack, home: tuple[dict[str, str], Path]
) -> None:
    env, user = home
    configure(env, user, "again")
    endpoint_id, pid = start_detached(stack, env, "again")
    restarted = run_cli(env, "restart", "--detach", "again")
    assert restarted.returncode == 0, restarted.stderr
    assert "is now stopped" in restarted.stdout and endpoint_id in restarted.stdout
    new_pid = int((user / "again" / "daemon.pid").read_text())
    assert new_pid != pid and alive([pid]) == []
    assert listed(env) == {"again": "Running"}


def test_start_registers_under_a_chosen_endpoint_uuid(
    stack: Stack, home: tuple[dict[str, str], Path]
) -> None:
    env, user = home
    configure(env, user, "chosen")
    wanted = "6a7c4d3e-2b1f-4e8a-9c0d-1e2f3a4b5c6d"
    endpoint_id, _ = start_detached(stack, env, "chosen", "--endpoint-uuid", wanted)
    assert endpoint_id == wanted
    assert run_cli(env, "stop", wanted).returncode == 0, "stop by id"


def test_delete_refuses_an_online_endpoint_and_force_stops_and_deletes_it(
    stack: Stack, home: tuple[dict[str, str], Path]
) -> None:
    env, user = home
    ep = configure(env, user, "doomed")
    endpoint_id, pid = start_detached(stack, env, "doomed")
    refused = run_cli(env, "delete", "--yes", "doomed")
    assert refused.returncode == 255 and "running" in refused.stderr
    unconfirmed = run_cli(env, "delete", "--force", "doomed", input="n\n")
    assert unconfirmed.returncode == 1 and ep.exists()
    deleted = run_cli(env, "delete", "--force", "doomed", input="y\n")
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted from the service and this machine" in deleted.stdout
    assert not ep.exists() and alive([pid]) == []
    with pytest.raises(urllib.error.HTTPError) as gone:
        stack.get(f"/v2/endpoints/{endpoint_id}")
    gone.value.close()  # the error is a response too: its connection stays open until closed
    assert gone.value.code == 404


def test_delete_of_a_service_online_endpoint_elsewhere_is_refused_with_255(
    stack: Stack, home: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, user = home
    configure(env, user, "twin")
    endpoint_id, _ = start_detached(stack, env, "twin")
    # A second machine (another user dir) knows the endpoint only by its id.
    other = stack.client_env(tmp_path / "other-host")
    refused = run_cli(other, "delete", "--yes", endpoint_id)
    assert refused.returncode == 255 and "online" in refused.stderr
    assert stack.get(f"/v2/endpoints/{endpoint_id}")["endpoint_id"] == endpoint_id


def test_enable_and_disable_on_boot_with_a_real_login(
    stack: Stack, home: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, user = home
    units = tmp_path / "units"
    units.mkdir()
    env = {**env, "COMPUTE_ENDPOINT_SYSTEMD_DIR": str(units)}
    configure(env, user, "booted")
    enabled = run_cli(env, "enable-on-boot", "booted")
    assert enabled.returncode == 0, enabled.stderr
    unit = units / "globus-compute-endpoint-booted.service"
    text = unit.read_text()
    assert f"GLOBUS_COMPUTE_USER_DIR={user}" in text and f'"--config-dir" "{user}"' in text
    assert stack.client_secret not in text
    disabled = run_cli(env, "disable-on-boot", "booted")
    assert disabled.returncode == 0 and not unit.exists()
