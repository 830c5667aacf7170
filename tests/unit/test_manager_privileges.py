"""A root manager runs user endpoints as the local users identities map to.

Needs root and `useradd`: a throw-away system user is created for the module and removed after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoint.manager.identity import EXPRESSION, LocalUser, MappingAuthorizer, MappingFile
from endpoint.manager.spawner import drop_privileges
from tests.unit.test_manager_flow import (
    OWNER,
    STRANGER,
    Service,
    Start,
    describe_process,
    new_uep,
    service,  # noqa: F401  (fixtures)
    start_manager,  # noqa: F401
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd"
    ),
]


@pytest.fixture(scope="module")
def mapped_user() -> Iterator[LocalUser]:
    name = f"gcuep{uuid.uuid4().hex[:6]}"
    extra = ["-G", "users"] if subprocess.run(["getent", "group", "users"]).returncode == 0 else []
    subprocess.run(
        ["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", "-d", "/nonexistent", *extra, name],
        check=True,
    )
    try:
        yield LocalUser.named(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def user_owned_dir(mapped_user: LocalUser) -> Iterator[Path]:
    # Not under pytest's tmp_path: that is private to root.
    path = Path(tempfile.mkdtemp(prefix="gcuep-"))
    os.chown(path, mapped_user.uid, mapped_user.gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_dropping_privileges_is_for_good(mapped_user: LocalUser) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(r)
        try:
            drop_privileges(mapped_user)
            try:
                os.setuid(0)
                regained = True
            except PermissionError:
                regained = False
            doc = {
                "ids": os.getresuid() + os.getresgid(),
                "groups": sorted(os.getgroups()),
                "regained": regained,
            }
            os.write(w, json.dumps(doc).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        got = json.loads(f.read())
    os.waitpid(pid, 0)
    u = mapped_user
    assert got["ids"] == [u.uid] * 3 + [u.gid] * 3
    assert got["groups"] == sorted(set(u.groups)) and not got["regained"]


def can_exec_python(user: LocalUser) -> bool:
    try:
        subprocess.run([sys.executable, "-c", ""], user=user.uid, group=user.gid, check=True)
    except (PermissionError, subprocess.CalledProcessError):
        return False
    return True


@pytest.mark.parametrize("launcher", ["fork", "exec"])
def test_a_mapped_identity_runs_as_its_local_user(
    service: Service,  # noqa: F811
    start_manager: Start,  # noqa: F811
    mapped_user: LocalUser,
    user_owned_dir: Path,
    tmp_path: Path,
    launcher: str,
) -> None:
    if launcher == "exec" and not can_exec_python(mapped_user):
        # Not a skip: the exec launcher would go untested. .ci/run opens /root for traversal.
        pytest.fail(
            f"{mapped_user.name} cannot run {sys.executable}: a directory above it is private"
            " (pyenv under /root: `chmod o+x /root`, as .ci/run does)"
        )
    mapping = tmp_path / "mapping.json"
    rules = [{"source": "{id}", "match": OWNER, "output": mapped_user.name}]
    mapping.write_text(json.dumps([{"DATA_TYPE": EXPRESSION, "mappings": rules}]))
    mgr = start_manager(
        launcher=launcher,
        authorizer=MappingAuthorizer(MappingFile(mapping)),
        user_env=f"GLOBUS_COMPUTE_USER_DIR: {user_owned_dir}\n",
        privileged=True,
    )
    uep = new_uep()
    service.command(uep)
    info = service.result(service.task(uep, describe_process))
    assert (info["uid"], info["gid"]) == (mapped_user.uid, mapped_user.gid)
    assert info["home"] == "/nonexistent" and info["nnp"] == "1"
    uep_dir = user_owned_dir / f"uep.test.{uep[:8]}"
    st = uep_dir.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (mapped_user.uid, 0o700)
    (start,) = mgr.audit("start")
    assert start["local_user"] == mapped_user.name and start["uid"] == mapped_user.uid
    other = new_uep()
    service.command(other, identity=STRANGER)
    assert "failed to map to a local user" in service.failure(other)
