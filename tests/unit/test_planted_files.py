"""`list`, `status` and `health` read an endpoint's pid, id and status files: a FIFO or a
symlink planted under those names must neither block them nor be followed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from endpoint.host.dirs import read_endpoint_id
from endpoint.host.pidlock import PID_FILE, State, clean_stale_pid, probe, read_pid
from endpoint.host.status import read_status


def test_a_fifo_as_pid_id_or_status_file_is_read_as_absent_without_blocking(
    tmp_path: Path,
) -> None:
    for name in (PID_FILE, "endpoint.json", "status.json"):
        os.mkfifo(tmp_path / name)
    # In a child with a deadline: a blocking open would hang the test, not fail it.
    code = (
        "import sys; from pathlib import Path;"
        "from endpoint.host.pidlock import probe;"
        "from endpoint.host.status import read_status;"
        "from endpoint.host.dirs import read_endpoint_id;"
        "d = Path(sys.argv[1]); p = probe(d);"
        "print(p.state.value, p.locked, read_status(d), read_endpoint_id(d))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["Disconnected", "False", "None", "None"]


def test_a_symlinked_pid_file_is_not_followed_and_is_removed_as_stale(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(str(os.getpid()))
    ep_dir = tmp_path / "ep"
    ep_dir.mkdir()
    (ep_dir / PID_FILE).symlink_to(target)
    (ep_dir / "endpoint.json").symlink_to(tmp_path / "id.json")
    (tmp_path / "id.json").write_text(json.dumps({"endpoint_id": "abc"}))
    assert read_pid(ep_dir) is None
    assert read_endpoint_id(ep_dir) is None
    assert read_status(ep_dir) is None
    assert probe(ep_dir).state is State.DISCONNECTED
    assert clean_stale_pid(ep_dir)
    assert not (ep_dir / PID_FILE).is_symlink()
    assert target.read_text() == str(os.getpid())  # the link's target is untouched
