"""Building per-user Python environments for real, with uv (issue 15).

What ``worker_init`` runs in the default core endpoint template: ``python -m
endpoint.manager.userenv activate SPEC``, as the user endpoint's user. uv works offline, from
its cache (tools/warm-uv-cache fills it), so these tests need no network.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoint.errors import UserEnvError
from endpoint.manager import userenv
from endpoint.manager.userenv import MARKER, EnvSpec

pytestmark = pytest.mark.integration

NOBODY = 65534


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        userenv.uv_binary()
        userenv.worker_wheel()
    except UserEnvError as e:
        pytest.fail(f"{e} (uv is a dependency: pip install -e .; then tools/warm-uv-cache)")
    monkeypatch.setenv("UV_OFFLINE", "1")
    # The builds' own cache would be empty: use the one tools/warm-uv-cache filled.
    monkeypatch.setenv("UV_CACHE_DIR", warm_cache())


def warm_cache() -> str:
    found = subprocess.run(
        [userenv.uv_binary(), "cache", "dir"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "UV_CACHE_DIR"},
    )
    return found.stdout.strip()


def spec(requirements: str = "six") -> EnvSpec:
    return userenv.spec_for({}, requirements)


def activate(
    root: Path, the_spec: EnvSpec, as_nobody: bool = False, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """The command worker_init runs, started (not waited for)."""
    command = [sys.executable, "-P", "-m", "endpoint.manager.userenv", "activate"]
    full_env = {**os.environ, "GLOBUS_COMPUTE_USER_DIR": str(root), **(env or {})}
    if as_nobody:
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    return subprocess.Popen(
        [*command, the_spec.encode()],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )


def finished(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def test_concurrent_first_builds_of_one_key_build_it_once(tmp_path: Path) -> None:
    the_spec = spec()
    procs = [activate(tmp_path, the_spec) for _ in range(3)]
    results = [finished(p) for p in procs]
    assert all(code == 0 for code, _, _ in results), results
    assert len({out for _, out, _ in results}) == 1  # one environment for all three
    builds = [err for _, _, err in results if "building the Python environment" in err]
    reuses = [err for _, _, err in results if "reusing the Python environment" in err]
    assert (len(builds), len(reuses)) == (1, 2), results
    env_dir = tmp_path / userenv.CACHE_DIR_NAME / the_spec.name
    assert f"export VIRTUAL_ENV={env_dir}" in results[0][1]
    marker = json.loads((env_dir / MARKER).read_text())
    assert marker["key"] == the_spec.key and marker["spec"]["requirements"] == "six"
    check = "import six, sys; print(sys.prefix)"
    where = subprocess.run(
        [env_dir / "bin" / "python", "-c", check], capture_output=True, text=True, check=True
    )
    assert where.stdout.strip() == str(env_dir)


def test_a_later_call_reuses_the_environment_untouched(tmp_path: Path) -> None:
    the_spec = spec()
    env_dir, built = userenv.ensure(the_spec, tmp_path)
    before = (env_dir.stat().st_ino, (env_dir / MARKER).read_text())
    again, built_again = userenv.ensure(the_spec, tmp_path)
    assert (built, built_again) == (True, False) and again == env_dir
    assert (env_dir.stat().st_ino, (env_dir / MARKER).read_text()) == before


def test_a_build_that_died_part_way_is_built_again(tmp_path: Path) -> None:
    the_spec = spec()
    half = tmp_path / the_spec.name
    (half / "bin").mkdir(parents=True)
    (half / "leftover").write_text("from a killed build")
    env_dir, built = userenv.ensure(the_spec, tmp_path)
    assert built and env_dir == half and not (half / "leftover").exists()
    assert (half / MARKER).exists()


def test_bad_requirements_fail_with_uvs_error_and_leave_nothing_behind(tmp_path: Path) -> None:
    the_spec = spec("no-such-package-compute-endpoint-test==9.9.9")
    code, out, err = finished(activate(tmp_path, the_spec))
    assert code == 1 and out == ""
    assert "cannot build the Python environment for this user endpoint" in err
    assert "No solution found" in err and "no-such-package-compute-endpoint-test" in err
    root = tmp_path / userenv.CACHE_DIR_NAME
    assert not (root / the_spec.name).exists()
    with pytest.raises(UserEnvError, match="No solution found"):
        userenv.ensure(the_spec, root)


def test_a_missing_python_minor_is_named(tmp_path: Path) -> None:
    the_spec = userenv.spec_for({"python": {"version_tuple": [3, 99, 0]}}, None)
    with pytest.raises(UserEnvError, match=r"creating a Python 3\.99 environment failed"):
        userenv.ensure(the_spec, tmp_path)


def test_a_cache_directory_of_someone_else_or_a_link_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(UserEnvError, match=f"belongs to uid {NOBODY}"):
        userenv.ensure(spec(), theirs)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UserEnvError, match="not a directory"):
        userenv.ensure(spec(), link)


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory `nobody` can reach (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="userenv-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_the_environment_is_built_as_the_calling_user_and_private(reachable_dir: Path) -> None:
    """As a user endpoint's worker_init runs it: here as `nobody`, with a home of its own and
    a copy of uv's cache (offline, as every test here). The private cache a build uses when
    none is named: tests/unit/test_userenv.py, tests/e2e/test_manager_mapped_user_envs.py."""
    tmp_path = reachable_dir
    home = tmp_path / "home"
    home.mkdir()
    cache = home / "uv-cache"
    shutil.copytree(warm_cache(), cache, symlinks=True)
    for path in [home, *home.rglob("*")]:
        os.lchown(path, NOBODY, NOBODY)
    env = {"HOME": str(home), "UV_CACHE_DIR": str(cache), "GLOBUS_COMPUTE_USER_DIR": ""}
    code, out, err = finished(activate(tmp_path / "unused", spec(), as_nobody=True, env=env))
    assert code == 0, err
    compute_dir = home / ".globus_compute"
    env_dir = compute_dir / userenv.CACHE_DIR_NAME / spec().name
    assert f"export VIRTUAL_ENV={env_dir}" in out
    for path in (compute_dir, env_dir.parent, env_dir):
        st = path.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (NOBODY, 0o700), path
    owners = {p.lstat().st_uid for p in env_dir.rglob("*")}
    assert owners == {NOBODY}


def test_a_build_that_hangs_is_stopped_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index that accepts connections and never answers (on loopback, here)."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        monkeypatch.delenv("UV_OFFLINE")
        monkeypatch.setenv(userenv.TIMEOUT_ENV, "3")
        hanging = spec(f"--index-url http://127.0.0.1:{port}/simple\nsix")
        with pytest.raises(UserEnvError, match=r"did not finish in 3 s"):
            userenv.ensure(hanging, tmp_path)
        assert not (tmp_path / hanging.name).exists()
    finally:
        server.close()


def test_a_bad_build_timeout_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(userenv.TIMEOUT_ENV, "soon")
    with pytest.raises(UserEnvError, match="GC_USER_ENV_BUILD_TIMEOUT_S='soon' is not a number"):
        userenv.ensure(spec(), tmp_path)
