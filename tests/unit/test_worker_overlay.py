"""The trees lent to worker images (`endpoint.containers.overlay`), the entry run by path,
and the image facts' parsing and cache (`endpoint.containers.imageinfo`), without a runtime.
The same code under real docker and podman: tests/containers/test_byo_image.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from endpoint.containers import imageinfo, overlay
from endpoint.containers.argv import launch_argv
from endpoint.containers.imageinfo import ImageInfo
from endpoint.containers.spec import ContainerSpec, LaunchContext
from endpoint.containers.versions import PARSL_KEYS, local_versions, mismatch
from endpoint.errors import ConfigError
from tests.unit.test_layout import ROOT


def test_the_code_tree_is_the_worker_package_plus_the_container_side() -> None:
    with (ROOT / "worker-package" / "pyproject.toml").open("rb") as f:
        listed = tomllib.load(f)["tool"]["setuptools"]["py-modules"]
    worker_package = {m.removesuffix(".__init__") for m in listed}
    found = overlay.worker_modules()
    containers = {
        "endpoint.containers",
        "endpoint.containers.entry",
        "endpoint.containers.versions",
        # The ProcessPoolEngine's container worker, and the local worker it shares code with.
        "endpoint.containers.worker",
        "endpoint.worker.__main__",
    }
    assert found == worker_package | containers


def test_the_trees_are_written_once_and_hold_the_endpoints_own_files(tmp_path: Path) -> None:
    first = overlay.ensure_overlay(tmp_path)
    again = overlay.ensure_overlay(tmp_path)
    assert first == again and first.deps is not None
    batching = first.code / "endpoint" / "engines" / "htex" / "batching.py"
    assert batching.read_bytes() == (ROOT / "endpoint/engines/htex/batching.py").read_bytes()
    assert not (first.code / "endpoint" / "amqp").exists()  # nothing of the service side
    pinned = {p.name.split("-")[0] for p in first.pin.glob("*.dist-info")}
    assert pinned == {"parsl", "dill"}
    deps = {p.name.split("-")[0].lower() for p in first.deps.glob("*.dist-info")}
    assert {"pyzmq", "psutil", "typeguard", "tblib"} <= deps and "parsl" not in deps
    assert "pika" not in deps and "docker" not in deps  # only what Parsl needs
    names = sorted(p.name for p in (tmp_path / overlay.OVERLAY_DIR).iterdir())
    assert [n.split("-")[0] for n in names] == ["code", "deps", "pin"]  # no partial trees left


def test_an_image_of_another_platform_gets_no_compiled_dependencies(tmp_path: Path) -> None:
    lent = overlay.ensure_overlay(tmp_path, with_deps=False)
    assert lent.deps is None
    assert "--last" not in overlay.entry_words(lent)


def test_the_entry_run_by_path_puts_the_trees_around_the_images_path(tmp_path: Path) -> None:
    lent = overlay.ensure_overlay(tmp_path)
    assert lent.deps is not None
    probe = tmp_path / "probe_mod"
    probe.mkdir()
    (probe / "show_path.py").write_text(
        "import json, sys, endpoint, parsl\n"
        "print(json.dumps([sys.path, endpoint.__file__, parsl.__file__]))\n"
    )
    words = overlay.entry_words(lent, python=sys.executable)
    words[-2:-2] = ["--first", str(probe)]  # the test module, ahead like the pin
    done = subprocess.run(
        [*words, "show_path"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    path, endpoint_file, parsl_file = json.loads(done.stdout)
    assert path[:3] == [str(lent.code), str(lent.pin), str(probe)]
    assert path[-1] == str(lent.deps)
    assert str(lent.code / "endpoint" / "containers") not in path
    assert endpoint_file.startswith(str(lent.code)) and parsl_file.startswith(str(lent.pin))


def test_the_entry_as_a_module_keeps_the_old_command(tmp_path: Path) -> None:
    (tmp_path / "hello_mod.py").write_text("import sys; print(sys.argv[1:])\n")
    done = subprocess.run(
        [sys.executable, "-m", "endpoint.containers.entry", "hello_mod", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": f"{ROOT}:{tmp_path}"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['x']"


def test_a_lent_worker_is_judged_on_what_it_runs() -> None:
    ours = local_versions()
    theirs = {**ours, "python": "3.9"}
    found = mismatch(ours, theirs, PARSL_KEYS, "docker image 'x'", lent=True)
    assert found is not None
    assert f"python 3.9 (endpoint: {ours['python']})" in found
    assert "Use an image with Python" in found and "container-compute-endpoint==" not in found
    assert mismatch(ours, dict(ours), PARSL_KEYS, "x", lent=True) is None
    shadowed = mismatch(ours, {**ours, "dill": "0.3.8"}, PARSL_KEYS, "x", lent=True)
    assert shadowed is not None and "dill 0.3.8" in shadowed and "sys.path" in shadowed


# ---- image facts -------------------------------------------------------------------------

ANSWER = {
    "python": "3.11",
    "python_full": "3.11.2",
    "machine": "x86_64",
    "libc": "glibc",
    "packages": {"parsl": "missing", "dill": "0.3.9"},
}


def test_the_probe_answer_is_parsed_from_its_last_line() -> None:
    stdout = b"some banner the image prints\n" + json.dumps(ANSWER).encode() + b"\n"
    info = imageinfo._parse(stdout)
    assert info is not None and info.python == "3.11"
    assert info.platform == overlay.Platform("x86_64", "glibc")
    assert "dill 0.3.9" in info.describe() and "parsl" not in info.describe()
    assert imageinfo._parse(b"not json\n") is None
    assert imageinfo._parse(b'{"python": "3.11"}\n') is None


def test_facts_are_cached_per_image_id_in_memory_and_in_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Client:
        def image_id(self, image: str) -> str | None:
            return "sha256:abc"

    asked: list[str] = []

    def probe(spec: ContainerSpec, run_dir: Path) -> ImageInfo:
        asked.append(spec.image or "")
        return ImageInfo(**ANSWER)  # type: ignore[arg-type]

    monkeypatch.setattr(imageinfo, "run_probe", probe)
    monkeypatch.setattr(imageinfo, "_memory", {})
    spec = ContainerSpec("docker", "img:1")
    cache = tmp_path / "images"
    for _ in range(2):
        assert imageinfo.image_info(spec, Client(), tmp_path, cache).python == "3.11"  # type: ignore[arg-type]
    assert asked == ["img:1"]
    (written,) = cache.glob("*.json")
    assert written.stat().st_mode & 0o777 == 0o600
    imageinfo._memory.clear()  # a restart: the file answers
    assert imageinfo.image_info(spec, Client(), tmp_path, cache).python == "3.11"  # type: ignore[arg-type]
    assert asked == ["img:1"]
    written.write_bytes(b"x" * (imageinfo.MAX_ANSWER_BYTES + 1))  # never parsed
    imageinfo._memory.clear()
    imageinfo.image_info(spec, Client(), tmp_path, cache)  # type: ignore[arg-type]
    assert asked == ["img:1", "img:1"]


def test_what_is_lent_is_mounted_read_only_over_the_run_dir() -> None:
    lent = "/ep/run/worker-overlay"
    ctx = LaunchContext("/ep/run", forward_env=(), user=None, read_only=(lent,))
    docker = launch_argv(ContainerSpec("docker", "img:1"), ctx, ["python3"])
    at = docker.index("/ep/run:/ep/run")
    assert docker[at + 1 : at + 3] == ["-v", f"{lent}:{lent}:ro"]
    apptainer = launch_argv(ContainerSpec("apptainer", "/x.sif"), ctx, ["python3"])
    at = apptainer.index("/ep/run:/ep/run")
    assert apptainer[at + 1 : at + 3] == ["--bind", f"{lent}:{lent}:ro"]
    with pytest.raises(ConfigError, match="cannot be mounted"):
        launch_argv(
            ContainerSpec("podman", "img:1"), LaunchContext("/ep", read_only=("/ep/a:b",)), ["x"]
        )


def test_trees_unused_for_a_week_go_when_a_new_one_is_written(tmp_path: Path) -> None:
    root = tmp_path / overlay.OVERLAY_DIR
    root.mkdir()
    old, recent = root / "code-0000old", root / "code-000recent"
    for tree in (old, recent):
        (tree / "endpoint").mkdir(parents=True)
    week_ago = time.time() - overlay.STALE_AFTER_S - 60
    os.utime(old, (week_ago, week_ago))
    lent = overlay.ensure_overlay(tmp_path)
    assert not old.exists() and recent.is_dir() and lent.code.is_dir()
    # Reused trees are marked as used, so they never age out while an endpoint uses them.
    os.utime(lent.code, (week_ago, week_ago))
    assert overlay.ensure_overlay(tmp_path).code == lent.code
    assert lent.code.stat().st_mtime > week_ago + 60
