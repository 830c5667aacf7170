"""ProcessPoolEngine container workers borrow the endpoint's worker code and dill (issue 15).

The launcher's side without a container runtime: which command a worker container gets, that
a Python minor the endpoint cannot serve is refused before any worker starts, and that the
lent worker really runs under a Python with no site-packages at all (``python3 -S``: nothing
of this project, no dill), answering its hello with the endpoint's versions and running a
task. The same under real docker and podman: tests/containers/test_byo_image.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from endpoint.containers import overlay
from endpoint.containers.imageinfo import ImageInfo
from endpoint.containers.spec import ContainerSpec
from endpoint.containers.versions import local_versions
from endpoint.engines import process_launch
from endpoint.engines.process_launch import WORKER_MODULE, ContainerLauncher, failure_code
from endpoint.errors import ContainerError, ImageNotFound, WorkerMismatch
from endpoint.protocol.messages import Result, unpack_as
from endpoint.worker.execute import WorkerOptions
from tests.unit.test_engines import EPID, submission

OPTIONS = '{"endpoint_id": "e", "run_dir": "/r"}'


def facts(python: str) -> ImageInfo:
    return ImageInfo(python, f"{python}.1", "x86_64", "glibc", {"dill": "missing"})


def prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: ContainerSpec, python: str = ""
) -> ContainerLauncher:
    asked: list[str] = []

    def image_info(spec: ContainerSpec, *_args: Any) -> ImageInfo:
        asked.append(spec.image or "")
        return facts(python or local_versions()["python"])

    monkeypatch.setattr(process_launch, "client_for", lambda spec: object())
    monkeypatch.setattr(process_launch, "ensure_image", lambda client, image: None)
    monkeypatch.setattr(process_launch, "image_info", image_info)
    launcher = ContainerLauncher(spec)
    launcher.prepare(tmp_path, "pool")
    assert asked == ([spec.image] if launcher.lent else [])
    return launcher


def test_a_worker_container_runs_the_lent_entry_with_the_overlay_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = prepared(tmp_path, monkeypatch, ContainerSpec("docker", "my/functions:1"))
    argv = launcher.argv(OPTIONS, 5)
    lent = overlay.ensure_overlay(tmp_path.resolve(), with_deps=False)
    at = argv.index("my/functions:1")
    assert argv[at + 1 :] == [
        "python3",
        str(lent.entry),
        "--first",
        str(lent.pin),
        WORKER_MODULE,
        "--options",
        OPTIONS,
        "--max-tasks",
        "5",
    ]
    root = str(tmp_path.resolve() / overlay.OVERLAY_DIR)
    assert f"{root}:{root}:ro" in argv and "-i" in argv
    # A process worker imports no compiled package, so no platform-bound tree is lent.
    assert not any(p.name.startswith("deps-") for p in Path(root).iterdir())


def test_another_python_minor_is_refused_before_any_worker_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(WorkerMismatch) as caught:
        prepared(tmp_path, monkeypatch, ContainerSpec("podman", "pypy:1"), python="3.9")
    text = str(caught.value)
    assert f"python 3.9 (endpoint: {local_versions()['python']})" in text
    assert "podman image 'pypy:1'" in text and "Use an image with Python" in text
    assert failure_code(caught.value) == "WorkerVersionMismatch"
    assert failure_code(ImageNotFound("x")) == "ContainerImageNotFound"
    assert failure_code(ContainerError("x")) == "ContainerStartFailed"


def test_a_custom_command_still_runs_the_images_own_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ContainerSpec("custom", None, ("sh", "-c", "exec {EXECUTOR_LAUNCH_CMD}"))
    launcher = prepared(tmp_path, monkeypatch, spec)
    assert not launcher.lent
    assert launcher.argv(OPTIONS, None)[-1].startswith(f"exec python3 -m {WORKER_MODULE} ")
    assert "container-compute-endpoint installed" in launcher.startup_hint()
    assert not (tmp_path / overlay.OVERLAY_DIR / "images").exists()


def where_from() -> list[str]:
    import sys

    import dill

    return ["no-site" if sys.flags.no_site else "site", dill.__file__]


def test_the_lent_worker_runs_on_a_python_with_no_site_packages(tmp_path: Path) -> None:
    python = shutil.which("python3", path="/usr/bin")
    assert python is not None, "Debian's python3 is needed (the endpoint's own Python)"
    lent = overlay.ensure_overlay(tmp_path, with_deps=False)
    ours, theirs = socket.socketpair()
    options = json.dumps(asdict(WorkerOptions(endpoint_id=EPID, run_dir=str(tmp_path))))
    words = overlay.entry_words(lent, python)
    words.insert(1, "-S")  # no site-packages: only the stdlib and what is lent
    proc = subprocess.Popen(
        [*words, WORKER_MODULE, "--options", options, "--max-tasks", "1"],
        stdin=theirs.fileno(),
        stdout=theirs.fileno(),
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin")},
    )
    theirs.close()
    conn = Connection(ours.detach())
    try:
        assert conn.poll(60), "no hello from the lent worker"
        launcher = ContainerLauncher(ContainerSpec("docker", "bare:1"))
        assert launcher.check_hello(conn.recv_bytes()) is None  # the endpoint's versions
        task = submission(where_from)
        conn.send((task.task_id, task.packed_task, task.result_serializers))
        assert conn.poll(60), "no result from the lent worker"
        result = unpack_as(conn.recv_bytes(), Result)
    finally:
        conn.close()
        assert proc.wait(60) == 0
    assert result.error_details is None, result.data
    from endpoint.protocol.serialize import deserialize

    flag, dill_file = deserialize(result.data)
    assert flag == "no-site" and dill_file.startswith(str(lent.pin))
