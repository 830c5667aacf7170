"""Issue 13 (finding 9): with the engine `configure` writes, a task that calls `os._exit`
(or segfaults, or is killed) costs only its own result, never the endpoint.

A thread pool runs tasks inside the endpoint's process, where `os._exit` ends it at once,
without a log line; so the default is a process pool. The check runs in a child process, so
that a default which lets the task kill its host fails this test instead of ending pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from endpoint.admin import configure
from endpoint.cli.app import main
from endpoint.config import EndpointConfig, load_endpoint_dir

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys, threading
from pathlib import Path
from endpoint.config import load_endpoint_dir
from endpoint.engines.build import build_engine
from tests.unit.test_engines import EPID, Results, add, hard_exit, submission

cfg, _, _ = load_endpoint_dir(Path(sys.argv[1]))
engine = build_engine(cfg.engine)
results = Results()
engine.start(endpoint_id=EPID, run_dir=Path(sys.argv[2]), on_result=results)
doomed, fine = submission(hard_exit), submission(add, 40)
engine.submit(doomed)
(failure,) = results.wait(doomed.task_id, timeout=60)
engine.submit(fine)
(good,) = results.wait(fine.task_id, timeout=60)
engine.shutdown(wait=True)
print(json.dumps({"doomed": failure.error_details, "fine": good.error_details is None}))
"""


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "u"))
    return tmp_path / "u"


def test_configure_writes_an_engine_whose_tasks_run_in_their_own_processes(
    user_dir: Path,
) -> None:
    assert main(["configure", "isolated"]) == 0
    cfg, _, _ = load_endpoint_dir(user_dir / "isolated")
    assert isinstance(cfg, EndpointConfig)
    assert cfg.engine.type == configure.DEFAULT_ENGINE["type"] == "ProcessPoolEngine"
    # The reason is written where the user edits it.
    assert "os._exit" in (user_dir / "isolated" / "config.yaml").read_text()


def test_a_task_calling_os_exit_does_not_end_an_endpoint_with_the_default_engine(
    user_dir: Path, tmp_path: Path
) -> None:
    assert main(["configure", "victim"]) == 0
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(user_dir / "victim"), str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
    )
    assert child.returncode == 0, f"the task ended its host: rc={child.returncode} {child.stderr}"
    found = json.loads(child.stdout.strip().splitlines()[-1])
    assert found["doomed"]["code"] == "WorkerLost"
    assert found["fine"] is True
