"""The embedded default broker on a shared machine (issue 13, finding 2).

`compute-webservice serve` without `--amqp-url` runs a private RabbitMQ under the service's
database directory. Another local user (a real other uid) must get nothing from it: no login
(`guest/guest`, or any credential it can read), no listing or reading of its state (the Erlang
cookie, the message store with task arguments, the credentials, the logs). The database
directory here is world-traversable (0755, like many home directories), so only the broker's
own protections stand in the way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

from tests.attacker import loose_modes, probe, require_root, tree
from webservice.broker import PrivateRabbit, free_port
from webservice.server import PORT_FILE, embedded_broker

pytestmark = pytest.mark.integration

SERVICE = [str(Path(sys.executable).parent / "compute-webservice")]
#: Where the embedded broker keeps its administrator (0600), beside its other state.
CREDENTIALS_FILE = "credentials.json"


@dataclass(frozen=True)
class Service:
    url: str
    state_dir: Path
    log: Path

    @property
    def broker_port(self) -> int:
        return int((self.state_dir / PORT_FILE).read_text())

    @property
    def admin_port(self) -> int:
        """The management API's port, from the node's config (0600; the test is root)."""
        conf = (self.state_dir / "rabbitmq.conf").read_text()
        return int(re.search(r"management\.tcp\.port = (\d+)", conf)[1])  # type: ignore[index]

    def password(self) -> str:
        doc = json.loads((self.state_dir / CREDENTIALS_FILE).read_text())
        return str(doc["password"])

    def amqp_url(self) -> str:
        """The service's own broker URL (`guest` where an older version has no credentials)."""
        creds = self.state_dir / CREDENTIALS_FILE
        doc = json.loads(creds.read_text()) if creds.exists() else {}
        user, password = doc.get("username", "guest"), doc.get("password", "guest")
        return f"amqp://{user}:{password}@127.0.0.1:{self.broker_port}/%2F"


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/v2/version", timeout=2).close()
    except OSError:
        return False
    return True


def _world_traversable_dir() -> Path:
    """A directory every local user may traverse, as a home directory often is."""
    base = Path(tempfile.mkdtemp(prefix="ws-shared-"))
    base.chmod(0o755)
    return base


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    """The real `compute-webservice serve`, embedded broker and all, as a user would run it."""
    require_root()
    base = _world_traversable_dir()
    (base / "ws").mkdir(mode=0o755)
    private = Path(tempfile.mkdtemp(prefix="ws-log-"))  # 0700: the log is the owner's alone
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPUTE_WEBSERVICE_")}
    argv = [*SERVICE, "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--db", str(base / "ws" / "webservice.db")]
    with open(private / "service.log", "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    svc = Service(f"http://127.0.0.1:{port}", base / "ws" / "rabbitmq", private / "service.log")
    try:
        deadline = time.monotonic() + 120
        while not _answers(svc.url):
            assert proc.poll() is None, (private / "service.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the service did not answer within 120 s"
            time.sleep(0.5)
        yield svc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


def test_a_local_user_cannot_log_in_to_the_embedded_broker(service: Service) -> None:
    dirs, files = tree(service.state_dir)
    found = probe(service.broker_port, dirs, files, admin_port=service.admin_port)
    assert found.connected == [], f"logged in as {found.connected}"


def test_a_local_user_can_list_or_read_nothing_of_the_embedded_broker(service: Service) -> None:
    # A message at rest, so the message store has something to steal.
    with pika.BlockingConnection(pika.URLParameters(service.amqp_url())) as conn:
        ch = conn.channel()
        ch.queue_declare("attacker.bait", durable=True)
        props = pika.BasicProperties(delivery_mode=2)
        ch.basic_publish("", "attacker.bait", b"task arguments", properties=props)
    dirs, files = tree(service.state_dir)
    assert any(f.name == ".erlang.cookie" for f in files) and len(files) > 5, files
    found = probe(service.broker_port, dirs, files)
    assert found.listable == [] and found.readable == [], found


def test_every_file_of_the_embedded_broker_is_owner_only(service: Service) -> None:
    assert loose_modes(service.state_dir) == {}


def test_the_service_uses_a_random_password_that_no_log_shows(service: Service) -> None:
    password = service.password()
    assert len(password) >= 32
    with pika.BlockingConnection(pika.URLParameters(service.amqp_url())) as conn:
        assert conn.is_open
    logs = [service.log, *(f for f in tree(service.state_dir)[1] if "log" in str(f))]
    assert len(logs) > 1
    leaks = [str(f) for f in logs if password.encode() in f.read_bytes()]
    assert leaks == []


def test_the_credentials_and_the_queues_survive_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "ws.db")
    with embedded_broker(db) as broker:
        first = broker.url
        assert not first.startswith("amqp://guest:")
        with pika.BlockingConnection(pika.URLParameters(broker.url)) as conn:
            ch = conn.channel()
            ch.queue_declare("kept", durable=True)
            props = pika.BasicProperties(delivery_mode=2)
            ch.basic_publish("", "kept", b"still here", properties=props)
    with embedded_broker(db) as broker:
        assert broker.url == first
        with pika.BlockingConnection(pika.URLParameters(broker.url)) as conn:
            _method, _props, body = conn.channel().basic_get("kept", auto_ack=True)
    assert body == b"still here"


def test_a_state_directory_an_older_version_left_loses_guest_and_loose_modes(
    tmp_path: Path,
) -> None:
    """Earlier versions left `guest/guest` and world-readable files in the state directory."""
    state = tmp_path / "rabbitmq"
    port = free_port()
    with PrivateRabbit(state, port=port) as broker:
        added = broker.ctl("add_user", "guest", "guest")
        assert added.returncode == 0 or "already exists" in added.stderr, added.stderr
        assert broker.ctl("set_permissions", "guest", ".*", ".*", ".*").returncode == 0
    for path in [state, *tree(state)[0], *tree(state)[1]]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    with PrivateRabbit(state, port=port) as again:
        assert loose_modes(state) == {}
        found = probe(port, [state], [])
        with pika.BlockingConnection(pika.URLParameters(again.url)) as conn:
            assert conn.is_open
    assert found.connected == []
