"""Per-user Python environments with real mapped users (issue 15): a core endpoint run as root
with an identity mapping, two clients of our service mapped to two unprivileged local users.

Each submitter's workers run as their own local user, in a uv environment built from their
`requirements` under that user's own Compute directory, with a uv cache as private; the other
user's tasks can neither list nor read either. Needs root and `useradd` (as .ci/run runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import Stack, _bin
from endpoint.errors import UserEnvError
from endpoint.manager import defaults
from endpoint.manager.identity import EXPRESSION, LocalUser
from endpoint.manager.userenv import CACHE_DIR_NAME, MARKER, UV_CACHE_NAME, uv_binary, worker_wheel
from tests.e2e.test_manager_user_envs import warm_cache

MANAGER = "ours-manager-mapped-uvenv"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="maps identities to local users: root")

SNIPPET = """
import json
from globus_compute_sdk import Executor

def probe(modules, theirs):
    import os, sys
    found = {{}}
    for name in modules:
        try:
            found[name] = __import__(name).__file__
        except ImportError as e:
            found[name] = "ImportError: " + str(e)
    tried = {{}}
    for path in theirs:
        try:
            if path.endswith("/"):
                tried[path] = "listed %d entries" % len(os.listdir(path))
            else:
                with open(path, "rb") as f:
                    tried[path] = "read %d bytes" % len(f.read(64))
        except OSError as e:
            tried[path] = type(e).__name__
    return {{"uid": os.getuid(), "euid": os.geteuid(), "prefix": sys.prefix,
            "home": os.environ.get("HOME"), "modules": found, "tried": tried}}

try:
    with Executor(endpoint_id={ep!r}, user_endpoint_config={cfg!r}) as ex:
        out = {{"ok": ex.submit(probe, {modules!r}, {theirs!r}).result(timeout=300)}}
except Exception as e:
    out = {{"error": type(e).__name__, "text": str(e)}}
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Submitter:
    """A client of our service and the local user its identity maps to."""

    client_id: str
    client_secret: str
    user: LocalUser

    @property
    def compute_dir(self) -> Path:
        return Path(self.user.home) / ".globus_compute"


def new_client(stack: Stack) -> tuple[str, str]:
    out = subprocess.run(
        [_bin("compute-webservice"), "create-client", "--db", str(stack.db)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    creds = json.loads(out)
    return creds["client_id"], creds["client_secret"]


def add_user(base: Path) -> LocalUser:
    name = f"gcenv{uuid.uuid4().hex[:6]}"
    home = base / name
    subprocess.run(["useradd", "-m", "-d", str(home), "-s", "/bin/sh", name], check=True)
    user = LocalUser.named(name)
    home.chmod(0o755)  # Debian's historical default: other users may enter a home
    # uv is offline here: each user's builds find a copy of the cache tools/warm-uv-cache
    # filled where they keep their own, left readable by all as uv makes a new cache.
    compute = home / ".globus_compute"
    shutil.copytree(warm_cache(), compute / UV_CACHE_NAME, symlinks=True)
    for path in [compute, *compute.rglob("*")]:
        os.lchown(path, user.uid, user.gid)
    # Readable by all too (the user's choice): the environments' own modes must protect them.
    compute.chmod(0o755)
    (compute / UV_CACHE_NAME).chmod(0o755)
    return user


@pytest.fixture(scope="module")
def homes() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is private to root.
    base = Path(tempfile.mkdtemp(prefix="gcenv-homes-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def submitters(stack: Stack, homes: Path) -> Iterator[list[Submitter]]:
    try:
        uv_binary()
        worker_wheel()
    except UserEnvError as e:
        pytest.fail(f"{e} (uv is a dependency: pip install -e .; then tools/warm-uv-cache)")
    if shutil.which("useradd") is None:
        pytest.fail("useradd is missing (package passwd)")
    made: list[LocalUser] = []
    try:
        made.append(add_user(homes))
        made.append(add_user(homes))
        other_id, other_secret = new_client(stack)
        yield [
            Submitter(stack.client_id, stack.client_secret, made[0]),
            Submitter(other_id, other_secret, made[1]),
        ]
    finally:
        for user in made:
            subprocess.run(["userdel", user.name], check=False, capture_output=True)


@pytest.fixture(scope="module")
def manager(stack: Stack, submitters: list[Submitter]) -> Iterator[str]:
    rules = [
        {"source": "{id}", "match": s.client_id, "literal": True, "output": s.user.name}
        for s in submitters
    ]
    ep_dir = stack.configure_endpoint(
        MANAGER,
        f"display_name: {MANAGER}\nheartbeat_period: 5\nemail: tester@example.org\n"
        # public: the second client, not the owner, may send it tasks.
        "public: true\nidentity_mapping_config_path: identity_mapping.json\n",
    )
    (ep_dir / "identity_mapping.json").write_text(
        json.dumps([{"DATA_TYPE": EXPRESSION, "mappings": rules}])
    )
    (ep_dir / "user_config_template.yaml.j2").write_text(defaults.USER_TEMPLATE)
    (ep_dir / "user_config_schema.json").write_text(json.dumps(defaults.USER_SCHEMA))
    # Nothing per user here: each user endpoint has its user's HOME, so its own Compute
    # directory; uv has no network and installs from the user's cache (add_user).
    (ep_dir / "user_environment.yaml").write_text("UV_OFFLINE: 1\n")
    ep = stack.start_endpoint(MANAGER)
    try:
        yield ep
    finally:
        stack.stop_endpoint(MANAGER)


def submit(
    stack: Stack,
    peer_python: Path,
    who: Submitter,
    ep: str,
    cfg: dict[str, Any],
    modules: list[str],
    theirs: list[str],
) -> dict[str, Any]:
    env = stack.client_env(stack.root / f"sdk-{who.user.name}")
    env.update(
        GLOBUS_COMPUTE_CLIENT_ID=who.client_id, GLOBUS_COMPUTE_CLIENT_SECRET=who.client_secret
    )
    snippet = SNIPPET.format(ep=ep, cfg=cfg, modules=modules, theirs=theirs)
    proc = subprocess.run(
        [str(peer_python), "-c", textwrap.dedent(snippet)],
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    log = stack.log_text(f"endpoint:{MANAGER}")[-3000:]
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n--- manager log ---\n{log}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "ok" in out, f"{out}\n--- manager log ---\n{log}"
    return dict(out["ok"])


def assert_private_env(who: Submitter, prefix: Path, requirements: str) -> None:
    """`prefix` is a finished environment in `who`'s own Compute directory, theirs alone."""
    root = who.compute_dir / CACHE_DIR_NAME
    assert prefix.parent == root, prefix
    for path in (root, prefix, who.compute_dir / UV_CACHE_NAME):
        st = path.lstat()
        assert (st.st_uid, st.st_mode & 0o077) == (who.user.uid, 0), path
    marker = prefix / MARKER
    assert marker.lstat().st_uid == who.user.uid and (marker.stat().st_mode & 0o077) == 0
    assert json.loads(marker.read_text())["spec"]["requirements"] == requirements
    assert (prefix / "bin" / "python").lstat().st_uid == who.user.uid
    # uv's own default cache (world-readable) was not used.
    assert not (Path(who.user.home) / ".cache" / "uv").exists()


def test_each_mapped_user_gets_a_private_environment_the_other_cannot_reach(
    manager: str, stack: Stack, peer_python: Path, submitters: list[Submitter]
) -> None:
    a, b = submitters
    first = submit(stack, peer_python, a, manager, {"requirements": "six"}, ["six", "tomli_w"], [])
    assert (first["uid"], first["euid"]) == (a.user.uid, a.user.uid), first
    assert first["home"] == a.user.home
    a_env = Path(first["prefix"])
    assert first["modules"]["six"].startswith(f"{a_env}/"), first
    assert first["modules"]["tomli_w"].startswith("ImportError"), first
    assert_private_env(a, a_env, "six")

    # B's task tries A's environment, its root, its marker and A's uv cache.
    a_cache = a.compute_dir / UV_CACHE_NAME
    theirs = [
        f"{a_env.parent}/",
        f"{a_env}/",
        str(a_env / MARKER),
        f"{a_cache}/",
        str(a_cache / "CACHEDIR.TAG"),
    ]
    second = submit(
        stack, peer_python, b, manager, {"requirements": "tomli-w"}, ["tomli_w", "six"], theirs
    )
    assert (second["uid"], second["euid"]) == (b.user.uid, b.user.uid), second
    b_env = Path(second["prefix"])
    assert second["modules"]["tomli_w"].startswith(f"{b_env}/"), second
    assert second["modules"]["six"].startswith("ImportError"), second
    assert_private_env(b, b_env, "tomli-w")
    assert second["tried"] == dict.fromkeys(theirs, "PermissionError"), second["tried"]
