"""`compute-endpoint diagnose` against real processes: a private RabbitMQ, our web service and
an endpoint started by its CLI on GlobusComputeEngine (a LocalProvider block, so there are
batch job scripts and Parsl logs), after it ran tasks.

The bundle must hold every part, and nothing secret: the test plants secrets where a user would
have them (the broker's real URL with its password, a client secret and API tokens in the
config's `worker_init`, which Parsl copies into every job script, and in the log) and greps every
member of the archive, decompressed, for each. Links planted in the endpoint's directory to
files elsewhere must not be followed.
"""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoint.host.status import read_status
from tests.fault.harness import FaultStack, values
from webservice.broker import free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
NAME = "diag"
API_TOKEN = "tok-planted-init-7f3a9c"
CONFIG_TOKEN = "tok-planted-config-51d0e2"
LOG_BEARER = "tok-planted-bearer-88aa13"
LOG_BROKER_PW = "brokerpw-planted-4c21"
OUTSIDE = "OUTSIDE-FILE-CONTENT-3b8f"

CONFIG = """\
display_name: diag
heartbeat_period: 2
# a note left for the admins -- api_token: {config_token}
engine:
  type: GlobusComputeEngine
  max_workers_per_node: 1
  address: 127.0.0.1
  provider:
    type: LocalProvider
    init_blocks: 1
    min_blocks: 0
    max_blocks: 1
    worker_init: |
      export BROKER_URL={broker_url}
      export MY_API_TOKEN={api_token}
      export GLOBUS_COMPUTE_CLIENT_SECRET={client_secret}
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[FaultStack]:
    s = FaultStack()
    try:
        s.start_service()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def ran(stack: FaultStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The endpoint after five tasks came back; a log with secrets and planted links."""
    ep_dir = stack.configure_endpoint(
        NAME,
        CONFIG.format(
            config_token=CONFIG_TOKEN,
            broker_url=stack.rabbit.url,
            api_token=API_TOKEN,
            client_secret=stack.client_secret,
        ),
    )
    endpoint_id = stack.start_endpoint(NAME, timeout=120)
    tasks, group = stack.submit(endpoint_id, "work", [(i, 0) for i in range(5)], None)
    results = stack.collect(group, len(tasks), timeout=180)
    assert sorted(values(results).values()) == [0, 1, 2, 3, 4], stack.log_text(f"endpoint:{NAME}")
    # The pool's versions reach status.json with a heartbeat after it registered: wait for it.
    deadline = time.monotonic() + 120
    while not ((read_status(ep_dir) or {}).get("engine") or {}).get("node_info"):
        assert time.monotonic() < deadline, read_status(ep_dir)
        time.sleep(0.5)
    # What a log line could carry: a connection URL, an Authorization header, the client secret,
    # the access token the endpoint's login cached.
    with open(ep_dir / "endpoint.log", "a") as log:
        log.write(
            f"2026-01-01 00:00:00 WARNING x: connecting to amqps://ep.x:{LOG_BROKER_PW}@h:5671/\n"
            f"2026-01-01 00:00:00 DEBUG x: headers {{'Authorization': 'Bearer {LOG_BEARER}'}}\n"
            f"2026-01-01 00:00:00 DEBUG x: client {stack.client_id} uses {stack.client_secret}\n"
            f"2026-01-01 00:00:00 DEBUG x: the service said no to {access_token(stack)}\n"
        )
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text(OUTSIDE)
    # Links where the bundle looks: a job's output, a Parsl log directory.
    scripts = ep_dir / "submit_scripts"
    (scripts / "parsl.htex.block-9.9999999999.5.sh.out").symlink_to(outside / "secret.txt")
    (ep_dir / "parsl" / "planted").symlink_to(outside, target_is_directory=True)
    yield ep_dir


def access_token(stack: FaultStack) -> str:
    """The token the endpoint's client-credentials login cached in the user dir's store."""
    db = sqlite3.connect(f"file:{stack.root / 'user' / 'storage.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT token_data_json FROM token_storage").fetchall()
    finally:
        db.close()
    tokens = [json.loads(text)["access_token"] for (text,) in rows]
    assert tokens and len(tokens[0]) >= 16
    return str(tokens[0])


def diagnose(
    stack: FaultStack, cwd: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(BIN / "compute-endpoint"), "diagnose", *args],
        env={**stack.client_env(stack.root / "user"), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def open_bundle(path: Path) -> dict[str, bytes]:
    """Every member by its name below the top directory, decompressed."""
    with tarfile.open(path, "r:gz") as tar:
        names = tar.getnames()
        tops = {n.split("/", 1)[0] for n in names}
        assert len(tops) == 1, names
        out = {}
        for m in tar.getmembers():
            assert m.isfile() and m.mode == 0o600, m.name
            f = tar.extractfile(m)
            assert f is not None
            out[m.name.split("/", 1)[1]] = f.read()
        assert names[0].endswith("/summary.txt")  # first: what a reader sees first
    return out


def bundle_of(out: subprocess.CompletedProcess[str]) -> Path:
    assert out.returncode == 0, out.stdout + out.stderr
    path = Path(out.stdout.strip().splitlines()[-1].removeprefix("> wrote "))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path


@pytest.fixture(scope="module")
def bundle(
    stack: FaultStack, ran: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    out = diagnose(stack, tmp_path_factory.mktemp("cwd"), NAME)
    path = bundle_of(out)
    assert path.parent.name.startswith("cwd") and f"-{NAME}-" in path.name
    members = open_bundle(path)
    # The whole archive as it lies on disk, decompressed: headers and every member.
    members["<raw tar>"] = gzip.decompress(path.read_bytes())
    return members


def test_every_part_is_in_the_bundle(bundle: dict[str, bytes], stack: FaultStack) -> None:
    summary = bundle["summary.txt"].decode()
    assert f"endpoint:  {NAME} (" in summary and "never registered" not in summary
    assert "state:     Running; healthy" in summary
    assert "service: ok" in summary and "broker: ok" in summary, summary
    config = bundle["config/config.yaml"].decode()
    assert "type: GlobusComputeEngine" in config and "worker_init" in config
    status = json.loads(bundle["status.json"])
    assert status["state"] == "running" and status["amqp_broker"].startswith("amqp://")
    versions = json.loads(bundle["versions.json"])
    assert versions["python"] == sys.version.split()[0]
    for dist in ("container-compute-endpoint", "parsl", "dill", "pika", "globus-sdk"):
        assert versions["packages"][dist], dist
    assert versions["os"]["platform"]
    # The worker pool's own versions, from its registration with the interchange.
    pools = [p for pools in (versions["workers"] or {}).values() for p in pools]
    assert pools and pools[0]["parsl_version"] == versions["packages"]["parsl"], versions
    assert b"starting" in bundle["endpoint.log"]
    journal = json.loads(bundle["journal.json"])
    assert journal["present"] and journal["pending_tasks"] == 0
    checks = {c["name"]: c for c in json.loads(bundle["checks.json"])}
    assert checks["service"]["ok"] and checks["service"]["target"] == f"{stack.url}/v2/version"
    assert checks["broker"]["ok"] and checks["broker"]["info"]["product"] == "RabbitMQ"
    scripts = [n for n in bundle if n.startswith("engine/submit_scripts/")]
    assert any(n.endswith(".sh") for n in scripts), sorted(bundle)
    assert any(n.endswith((".out", ".err", ".stdout", ".stderr")) for n in scripts)
    assert any(n.startswith("engine/parsl/") and n.endswith(".log") for n in bundle)
    assert b"journal.db" in bundle["files.txt"]


def test_nothing_secret_is_in_the_bundle(bundle: dict[str, bytes], stack: FaultStack) -> None:
    password = stack.rabbit.url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    secrets = {
        "the broker's password": password,
        "the client secret": stack.client_secret,
        "the API token in worker_init": API_TOKEN,
        "the token in a config comment": CONFIG_TOKEN,
        "the bearer token in the log": LOG_BEARER,
        "the broker password in a logged URL": LOG_BROKER_PW,
        "the cached access token": access_token(stack),
    }
    assert len(password) >= 8
    found = [
        f"{what} in {member}"
        for member, data in bundle.items()
        for what, secret in secrets.items()
        if secret.encode() in data
    ]
    assert not found, found
    # Redacted, not dropped: the lines are still there to read.
    assert b"export MY_API_TOKEN=<redacted>" in bundle["config/config.yaml"]
    assert b"Bearer <redacted>" in bundle["endpoint.log"]
    assert b"amqps://<redacted>@h:5671/" in bundle["endpoint.log"]
    script = next(
        v for n, v in bundle.items() if n.startswith("engine/submit_scripts/") and n.endswith(".sh")
    )
    assert b"MY_API_TOKEN=<redacted>" in script


def test_links_planted_in_the_endpoint_dir_are_not_followed(bundle: dict[str, bytes]) -> None:
    assert not [n for n, data in bundle.items() if OUTSIDE.encode() in data]
    assert not [n for n in bundle if "block-9" in n or "planted/" in n]
    listing = bundle["engine/submit_scripts.files.txt"].decode()
    assert any(line.startswith("symlink") and "block-9" in line for line in listing.splitlines())
    assert b"not followed" in bundle["summary.txt"]


def test_an_endpoint_that_never_ran_with_the_service_down(
    stack: FaultStack, tmp_path: Path
) -> None:
    ep_dir = stack.configure_endpoint(
        "never", f"engine:\n  type: ThreadPoolEngine\n  max_workers: 1\n# token: {CONFIG_TOKEN}\n"
    )
    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE)
    for name in ("endpoint.log", "status.json", "journal.db"):
        (ep_dir / name).symlink_to(outside)
    # FIFOs where files are read: opening one for reading waits for a writer, forever.
    (ep_dir / "submit_scripts").mkdir()
    os.mkfifo(ep_dir / "submit_scripts" / "parsl.htex.block-0.1700000000.1.sh.out")
    os.mkfifo(ep_dir / "daemon.pid")
    down = f"http://127.0.0.1:{free_port()}"
    out = diagnose(
        stack,
        tmp_path / "cwd",
        "never",
        "--output",
        str(tmp_path / "b.tgz"),
        COMPUTE_SERVICE_URL=down,
    )
    path = bundle_of(out)
    assert path == tmp_path / "b.tgz"
    bundle = open_bundle(path)
    summary = bundle["summary.txt"].decode()
    assert "never registered" in summary and "state:     unknown" in summary
    assert "daemon.pid: not a regular file" in summary
    assert f"service: FAILED ({down}/v2/version): cannot connect" in summary, summary
    assert "broker: FAILED (no target): skipped" in summary
    assert "endpoint.log: not read: a symbolic link" in summary
    assert "journal: not read" in summary
    assert not [
        n for n, data in bundle.items() if OUTSIDE.encode() in data or CONFIG_TOKEN.encode() in data
    ]
    assert "endpoint.log" not in bundle and "status.json" not in bundle
    # The printed summary says the same; a second run never overwrites the first bundle.
    assert "service: FAILED" in out.stdout
    again = diagnose(
        stack, tmp_path / "cwd", "never", "--output", str(path), COMPUTE_SERVICE_URL=down
    )
    assert again.returncode == 1 and "cannot write" in again.stderr
    assert os.stat(path).st_size > 0


def test_a_core_endpoint_bundle_has_its_templates_redacted(
    stack: FaultStack, tmp_path: Path
) -> None:
    env = stack.client_env(stack.root / "user")
    made = subprocess.run(
        [str(BIN / "compute-endpoint"), "configure", "core", "--multi-user", "true",
         "--contact-email", "admin@example.org"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    ep_dir = stack.root / "user" / "core"
    with open(ep_dir / "user_environment.yaml", "a") as f:
        f.write(f"\nSITE_API_TOKEN: {API_TOKEN}\n")
    down = f"http://127.0.0.1:{free_port()}"
    out = diagnose(stack, tmp_path, "core", COMPUTE_SERVICE_URL=down)
    bundle = open_bundle(bundle_of(out))
    assert "kind:      core (multi-user)" in bundle["summary.txt"].decode()
    for name in ("user_config_template.yaml.j2", "user_config_schema.json"):
        assert bundle[f"config/{name}"] == (ep_dir / name).read_bytes()
    assert b"SITE_API_TOKEN: <redacted>" in bundle["config/user_environment.yaml"]
    assert not [n for n, data in bundle.items() if API_TOKEN.encode() in data]
