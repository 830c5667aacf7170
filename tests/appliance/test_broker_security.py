"""No default broker credentials in the images and the compose stack (issue 13, finding 2).

Containers run on the host's network, so every local user of the host reaches their broker on
loopback. As such a user (a real other uid, `nobody`), the tests try `guest/guest` and every
credential it can read (files, every command line), and list and read the broker's state in
the containers' volumes; they check that the state is owner-only (0700/0600), that the broker
credentials made at first boot are what the web service uses, and that no log and no container
setting shows the password. The all-in-one's state is a bind mount of a world-traversable host
directory (as `-v $PWD/state:...` would be), so only its own modes protect it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.appliance.conftest import (
    PREFIX,
    ROOT,
    Container,
    Images,
    broker_ports,
    docker,
    free_port,
    run_container,
    sh,
)
from tests.attacker import loose_modes, probe, require_root, tree

STATE = "/var/lib/compute-endpoint"
APPLIANCE_BIN = "/opt/compute-endpoint/appliance/bin"
#: A URL or setting with a password written into a file.
LITERAL_PASSWORD = re.compile(
    r"amqps?://[^\s:/@${]+:[^\s@${]+@|guest:guest|default_pass|DEFAULT_PASS"
)
#: The all-in-one's broker state inside STATE (entrypoint: $APPLIANCE_STATE_DIR/rabbitmq).
AIO_BROKER_STATE = "appliance/rabbitmq"


@dataclass(frozen=True)
class AllInOne:
    box: Container
    state: Path  # the host directory mounted at STATE
    broker_env: dict[str, str]  # what `rabbitmq-run ctl` needs to reach the node

    @property
    def broker_port(self) -> int:
        return int(self.broker_env["BROKER_PORT"])


@pytest.fixture(scope="module")
def aio(images: Images) -> Iterator[AllInOne]:
    require_root()
    state = Path(tempfile.mkdtemp(prefix="ccea-aio-state-"))
    state.chmod(0o755)
    os.chown(state, 10001, 0)
    ports = broker_ports()
    box = run_container(
        images.all_in_one,
        name=f"{PREFIX}-aio-sec",
        env={"WEBSERVICE_PORT": str(free_port()), **ports},
        options=("--volume", f"{state}:{STATE}", "--health-interval", "2s"),
    )
    try:
        box.wait_health("healthy", timeout=240)
        yield AllInOne(box, state, {**ports, "RABBITMQ_STATE_DIR": f"{STATE}/{AIO_BROKER_STATE}"})
    finally:
        docker("rm", "--force", "--volumes", box.name, check=False)
        shutil.rmtree(state, ignore_errors=True)


def _password(credentials: Path) -> str:
    return str(json.loads(credentials.read_text())["password"])


def test_a_host_user_cannot_log_in_to_the_all_in_one_broker(aio: AllInOne) -> None:
    dirs, files = tree(aio.state)
    found = probe(aio.broker_port, dirs, files, int(aio.broker_env["BROKER_ADMIN_PORT"]))
    assert found.connected == [], f"logged in as {found.connected}"


def test_a_host_user_can_read_nothing_of_the_all_in_one_broker(aio: AllInOne) -> None:
    broker_state = aio.state / AIO_BROKER_STATE
    dirs, files = tree(broker_state)
    assert any(f.name == ".erlang.cookie" for f in files), files
    found = probe(aio.broker_port, dirs, files)
    assert found.listable == [] and found.readable == [], found
    assert loose_modes(broker_state) == {}


def test_the_all_in_one_service_uses_a_first_boot_password_no_log_shows(aio: AllInOne) -> None:
    credentials = aio.state / AIO_BROKER_STATE / "credentials.json"
    password = _password(credentials)
    assert len(password) >= 32
    # The web service is connected (the container is healthy): with this password, as no
    # other user exists.
    env = [f"--env={k}={v}" for k, v in aio.broker_env.items()]
    users = docker(
        "exec", *env, aio.box.name, f"{APPLIANCE_BIN}/rabbitmq-run", "ctl", "-q", "list_users"
    )
    assert "guest" not in users and json.loads(credentials.read_text())["username"] in users
    assert password not in aio.box.logs(tail=100000)
    assert password not in json.dumps(aio.box.inspect())


# ---- compose -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    project: str
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 300) -> str:
        return sh(
            "docker-compose", "-f", str(ROOT / "compose.yaml"), "-p", self.project, *args,
            env=self.env, timeout=timeout, cwd=ROOT,
        )  # fmt: skip

    def volume(self, name: str) -> Path:
        out = docker("volume", "inspect", "--format", "{{.Mountpoint}}", f"{self.project}_{name}")
        return Path(out.strip())

    def volumes(self) -> list[Path]:
        """The mount points of every volume of the stack."""
        names = docker("volume", "ls", "--quiet", "--filter", f"name={self.project}_").split()
        return [self.volume(n.removeprefix(f"{self.project}_")) for n in names]


@pytest.fixture(scope="module")
def stack(images: Images) -> Iterator[Stack]:
    require_root()
    env = {
        **os.environ,
        **broker_ports(),
        # Not the SDK's localhost:5000: the endpoint alone talks to this service.
        "WEBSERVICE_PORT": str(free_port()),
        "BROKER_IMAGE": images.broker,
        "COMPUTE_ENDPOINT_IMAGE": images.endpoint,
        "HEALTH_INTERVAL": "2s",
        "ENDPOINT_CONFIG": "{engine: {type: ThreadPoolEngine, max_workers: 1}}",
    }
    s = Stack(f"{PREFIX.replace('-', '')}brokersec", env)
    try:
        s.compose("up", "-d")
        Container(f"{s.project}_endpoint_1").wait_health("healthy", timeout=240)
        yield s
    finally:
        s.compose("down", "--volumes", "--timeout", "20")


def test_a_host_user_cannot_log_in_to_the_compose_broker(stack: Stack) -> None:
    dirs: list[Path] = []
    files: list[Path] = []
    for volume in stack.volumes():
        more_dirs, more_files = tree(volume)
        dirs, files = dirs + more_dirs, files + more_files
    found = probe(int(stack.env["BROKER_PORT"]), dirs, files, int(stack.env["BROKER_ADMIN_PORT"]))
    assert found.connected == [], f"logged in as {found.connected}"
    assert found.listable == [] and found.readable == [], found


def test_the_compose_broker_state_and_secret_are_owner_only(stack: Stack) -> None:
    secret = stack.volume("broker-secret") / "credentials.json"
    assert secret.stat().st_uid == 10001 and oct(secret.stat().st_mode & 0o777) == "0o600"
    assert loose_modes(stack.volume("broker-data")) == {}
    assert loose_modes(stack.volume("broker-secret")) == {}
    password = _password(secret)
    for service in ("broker", "webservice", "endpoint"):
        box = Container(f"{stack.project}_{service}_1")
        assert password not in box.logs(tail=100000), service
        assert password not in json.dumps(box.inspect()), service


def test_no_default_password_in_the_compose_file_or_the_images() -> None:
    sources = ["compose.yaml", "Dockerfile", "entrypoint", "apptainer.def"]
    sources += ["appliance/broker/Dockerfile", "appliance/bin/run-webservice"]
    found = {name: LITERAL_PASSWORD.findall((ROOT / name).read_text()) for name in sources}
    assert {name: hits for name, hits in found.items() if hits} == {}
    config = sh("docker-compose", "-f", str(ROOT / "compose.yaml"), "config", cwd=ROOT)
    assert LITERAL_PASSWORD.findall(config) == []
