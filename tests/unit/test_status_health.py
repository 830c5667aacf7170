"""status.json and the health rule (endpoint/host/status.py), without a broker."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from endpoint.cli import app as cli
from endpoint.host.pidlock import PidLock
from endpoint.host.status import STATUS_FILE, judge, read_status, write_status


def healthy_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "pid": os.getpid(),
        "endpoint_id": "0b6f5c2e-3f43-4d6c-9c36-1c2d51e5a0d1",
        "state": "running",
        "amqp_connected": True,
        "amqp_sessions": {"amqp-tasks": True, "amqp-results": True},
        "last_heartbeat_unix": time.time() - 1,
        "heartbeat_period": 5.0,
        "engine": {},
        "interchange": {"queued_tasks": 0, "running_tasks": 0, "unconfirmed_results": 0},
    }
    doc.update(changes)
    return doc


def test_status_file_is_replaced_atomically_and_private(tmp_path: Path) -> None:
    write_status(tmp_path, healthy_doc(state="starting"))
    write_status(tmp_path, healthy_doc())
    assert read_status(tmp_path)["state"] == "running"  # type: ignore[index]
    assert stat.S_IMODE((tmp_path / STATUS_FILE).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [STATUS_FILE]  # no temp file left


def test_a_live_connected_endpoint_with_a_fresh_heartbeat_is_healthy() -> None:
    assert judge(healthy_doc(), alive=True).healthy


@pytest.mark.parametrize(
    ("doc", "alive", "reason"),
    [
        (None, False, "has not run"),
        (healthy_doc(), False, "not running"),
        (healthy_doc(state="stopping"), True, "is stopping"),
        (
            healthy_doc(amqp_connected=False, amqp_sessions={"amqp-tasks": False}),
            True,
            "amqp-tasks down",
        ),
        (healthy_doc(last_heartbeat_unix=None), True, "no heartbeat"),
        (healthy_doc(last_heartbeat_unix=time.time() - 21), True, "limit 20s"),
        (
            healthy_doc(engine_breaker={"state": "open", "reason": "sbatch: bad partition\nmore"}),
            True,
            "keeps failing; no new engine for now: sbatch: bad partition",
        ),
        (healthy_doc(engine_breaker={"state": "open", "reason": ""}), True, "unknown"),
    ],
)
def test_unhealthy_verdicts_say_why(doc: dict[str, Any] | None, alive: bool, reason: str) -> None:
    verdict = judge(doc, alive=alive)
    assert not verdict.healthy and reason in verdict.reason


def test_health_command_needs_the_writer_to_hold_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path))
    ep_dir = tmp_path / "ep"
    ep_dir.mkdir()
    (ep_dir / "config.yaml").write_text("engine: {type: ThreadPoolEngine}\n")
    write_status(ep_dir, healthy_doc())
    assert cli.main(["health", "ep"]) == 1
    assert "not running" in capsys.readouterr().err
    lock = PidLock.acquire(ep_dir)
    try:
        assert cli.main(["health", "ep"]) == 0
        assert cli.main(["status", "ep", "--format", "json"]) == 0
        assert '"healthy": true' in capsys.readouterr().out
        assert cli.main(["status", "ep"]) == 0
        assert "amqp-results up" in capsys.readouterr().out
    finally:
        lock.release()
