"""`stop` against real processes that hold the endpoint lock, and `start`'s early steps.

The "endpoints" here are small Python processes that take the real `PidLock` and spawn
children that ignore SIGTERM, so escalation and the reaping of leftovers are exercised
without a web service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from endpoint.cli.app import main
from endpoint.cli.exits import EX_CONFIG, EX_TEMPFAIL
from endpoint.host import daemon
from endpoint.host.dirs import write_endpoint_id
from endpoint.host.pidlock import State, probe

EP_ID = "4ff1b5b8-7a4e-4b1a-9a8e-6b3bb0e3b4a1"

FAKE_ENDPOINT = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    from pathlib import Path
    from endpoint.host.pidlock import PidLock
    ep, mode = Path(sys.argv[1]), sys.argv[2]
    lock = PidLock.acquire(ep)
    stubborn_child = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    )
    kids = [subprocess.Popen([sys.executable, "-c", stubborn_child]) for _ in range(2)]
    (ep / "kids").write_text(" ".join(str(k.pid) for k in kids))
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:  # exits cleanly on SIGTERM, but forgets its children
        signal.signal(signal.SIGTERM, lambda *a: (lock.release(), os._exit(0)))
    print("ready", flush=True)
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "u"))
    monkeypatch.setattr(daemon, "REAP_S", 0.5)
    umask = os.umask(0o022)
    yield tmp_path / "u"
    os.umask(umask)


def _configured(user_dir: Path, name: str, extra: str = "") -> Path:
    ep = user_dir / name
    ep.mkdir(parents=True)
    (ep / "config.yaml").write_text("engine:\n  type: ThreadPoolEngine\n" + extra)
    write_endpoint_id(ep, EP_ID)
    return ep


@pytest.fixture
def fake_endpoint(user_dir: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def spawn(name: str, mode: str, own_session: bool) -> tuple[subprocess.Popen[str], list[int]]:
        ep = _configured(user_dir, name)
        proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_ENDPOINT, str(ep), mode],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=own_session,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc, [int(p) for p in (ep / "kids").read_text().split()]

    yield spawn
    for proc in procs:  # only what this test started
        for child in psutil.Process(proc.pid).children(recursive=True) if _alive(proc.pid) else []:
            child.kill()
        proc.kill()
        proc.wait()
        if proc.stdout is not None:  # the "ready" pipe: an unclosed one is a ResourceWarning
            proc.stdout.close()


@pytest.mark.parametrize("own_session", [True, False])
def test_one_stop_ends_an_endpoint_and_the_children_it_forgot(
    user_dir: Path, fake_endpoint: object, own_session: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, kids = fake_endpoint("coop", "cooperative", own_session)  # type: ignore[operator]
    assert probe(user_dir / "coop").state is State.RUNNING
    assert main(["stop", "coop"]) == 0
    assert proc.wait(5) == 0
    assert not any(_alive(k) for k in kids)
    assert probe(user_dir / "coop").state is State.STOPPED
    captured = capsys.readouterr()
    assert "is now stopped" in captured.out and "leftover" in captured.err


def _record_graces(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The grace periods `stop` gives: the endpoint's time between SIGTERM and SIGKILL."""
    graces: list[float] = []
    real = daemon.stop_tree

    def recording(pid: int, running: Callable[[], bool], grace_s: float) -> daemon.StopReport:
        graces.append(grace_s)
        return real(pid, running, grace_s)

    monkeypatch.setattr(daemon, "stop_tree", recording)
    return graces


@pytest.mark.parametrize("own_session", [True, False])
def test_an_endpoint_that_ignores_sigterm_is_killed_with_its_tree(
    user_dir: Path,
    fake_endpoint: object,
    own_session: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graces = _record_graces(monkeypatch)
    proc, kids = fake_endpoint("stub", "stubborn", own_session)  # type: ignore[operator]
    assert main(["stop", "stub", "--timeout", "0.5"]) == 0
    assert graces == [0.5]  # the grace --timeout asked for, not the default
    assert proc.wait(5) == -signal.SIGKILL
    assert not any(_alive(k) for k in kids)
    assert not (user_dir / "stub" / "daemon.pid").exists()
    assert probe(user_dir / "stub").state is State.STOPPED
    assert "killed" in capsys.readouterr().err


def test_stop_cleans_the_pid_file_of_a_dead_endpoint(
    user_dir: Path, fake_endpoint: object, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, _ = fake_endpoint("dead", "stubborn", True)  # type: ignore[operator]
    os.killpg(proc.pid, 9)
    proc.wait(5)
    assert probe(user_dir / "dead").state is State.DISCONNECTED
    assert main(["stop", "dead"]) == 0
    assert "stale pid file" in capsys.readouterr().out
    assert probe(user_dir / "dead").state is State.STOPPED
    assert main(["stop", "dead"]) == 0
    assert "not running" in capsys.readouterr().out


def test_a_failing_endpoint_setup_exits_78_and_shows_its_output(
    user_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ep = _configured(user_dir, "setup", "endpoint_setup: echo preparing; echo boom >&2; exit 3\n")
    assert main(["start", "setup"]) == EX_CONFIG
    err = capsys.readouterr().err
    assert "endpoint_setup exited with 3" in err and "preparing" in err and "boom" in err
    assert not (ep / "daemon.pid").exists()


def test_teardown_pairs_with_a_successful_setup_even_when_registration_fails(
    user_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from webservice.broker import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("COMPUTE_SERVICE_URL", closed)
    monkeypatch.setenv("GLOBUS_SDK_ENVIRONMENT", "local")
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_AUTH", closed + "/")
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", "0c8b2a8e-51a3-4a52-8a8c-2b7f2f6f6a11")
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", "not-used")
    hooks = (
        'endpoint_setup: echo "$GLOBUS_COMPUTE_ENDPOINT_NAME" > setup.ran\n'
        "endpoint_teardown: touch teardown.ran\n"
    )
    ep = _configured(user_dir, "hooks", hooks)
    assert main(["start", "hooks"]) == EX_TEMPFAIL
    assert (ep / "setup.ran").read_text().strip() == "hooks"
    assert (ep / "teardown.ran").exists()
    assert not (ep / "daemon.pid").exists()
    assert "cannot reach" in capsys.readouterr().err


def test_start_cleans_a_stale_pid_file_before_it_starts(
    user_dir: Path, fake_endpoint: object, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, _ = fake_endpoint("again", "stubborn", True)  # type: ignore[operator]
    os.killpg(proc.pid, 9)
    proc.wait(5)
    with open(user_dir / "again" / "config.yaml", "a") as f:
        f.write("endpoint_setup: exit 1\n")  # stop right after the lock step
    assert main(["start", "again"]) == EX_CONFIG
    assert "had not shut down cleanly" in capsys.readouterr().err
    assert not (user_dir / "again" / "daemon.pid").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the contact-email rule is for root managers")
def test_a_root_manager_without_email_is_refused_by_start(
    user_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["configure", "--multi-user", "mgr", "--contact-email", "a@example.org"]) == 0
    config = user_dir / "mgr" / "config.yaml"  # configure requires it: remove it afterwards
    config.write_text(config.read_text().replace("email: a@example.org\n", ""))
    assert main(["start", "mgr"]) == EX_CONFIG
    assert "run by root needs `email`" in capsys.readouterr().err


def test_paths_endpoint_log_moves_the_log(
    user_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = "paths:\n  endpoint_log: logs/ep.log\nendpoint_setup: echo from-setup; exit 1\n"
    ep = _configured(user_dir, "logged", extra)
    assert main(["start", "logged"]) == EX_CONFIG
    assert "endpoint_setup: from-setup" in (ep / "logs" / "ep.log").read_text()
    assert not (ep / "endpoint.log").exists()


def test_one_stop_suffices_even_while_the_endpoint_is_still_starting(user_dir: Path) -> None:
    ep = _configured(user_dir, "slow", "endpoint_setup: sleep 30\n")
    env = {**os.environ, "GLOBUS_COMPUTE_USER_DIR": str(user_dir)}
    starter = subprocess.Popen(
        [sys.executable, "-m", "endpoint.cli", "start", "slow"],
        env=env,
        # Never read: a pipe would fill, and its setup child keeps it open past a kill.
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while probe(ep).state is not State.RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
        assert probe(ep).state is State.RUNNING, "the lock is taken before setup runs"
        stopper = subprocess.run(
            [sys.executable, "-m", "endpoint.cli", "stop", "slow", "--timeout", "20"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stopper.returncode == 0, stopper.stderr
        assert starter.wait(10) == 130
        assert "killed" not in stopper.stderr
        assert probe(ep).state is State.STOPPED
    finally:
        starter.kill()
        starter.wait()
