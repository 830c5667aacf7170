"""The manager against a real RabbitMQ, with real user endpoint processes.

The test plays the web service with pika: it declares the queues, publishes start commands
and tasks, and reads results and heartbeats, so every promise is checked on the wire.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest

from endpoint.amqp.queues import QueueInfo
from endpoint.config import ManagerConfig
from endpoint.manager.audit import AUDIT_FILE
from endpoint.manager.audit import read as read_audit
from endpoint.manager.core import Manager, ManagerSettings
from endpoint.manager.identity import Authorizer, LocalUser, OwnerAuthorizer
from endpoint.protocol.messages import EPStatusReport, Result, Task, pack, unpack_as
from endpoint.protocol.serialize import DillCodeSource, deserialize, pack_buffers, serialize

pytestmark = pytest.mark.integration

OWNER = "aaaaaaaa-0000-0000-0000-000000000001"
STRANGER = "bbbbbbbb-0000-0000-0000-000000000002"
TEMPLATE = """\
engine:
  type: ThreadPoolEngine
  max_workers: {{ workers|default(2) }}
heartbeat_period: 5
{% if setup is defined %}endpoint_setup: {{ setup }}
{% endif %}"""
SCHEMA = {"type": "object", "properties": {"workers": {"type": "integer", "minimum": 1}}}


def describe_process() -> dict[str, Any]:
    import os

    with open("/proc/self/status") as f:
        nnp = next(line.split()[1] for line in f if line.startswith("NoNewPrivs"))
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "pid": os.getpid(),
        "home": os.environ.get("HOME"),
        "name": os.environ.get("GLOBUS_COMPUTE_ENDPOINT_NAME"),
        "python": os.environ.get("GC_USER_PYTHON_VERSION"),
        "nnp": nnp,
        "secret": os.environ.get("GLOBUS_COMPUTE_CLIENT_SECRET"),
        "extra": os.environ.get("FROM_USER_ENV"),
    }


@dataclass
class Service:
    """The web service's side of the queues, on a blocking pika connection."""

    url: str
    unique: str
    results: dict[str, Result] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(self.url))
        self.ch = self.conn.channel()
        for q in (self.commands, self.result_queue, self.manager_hb):
            self.ch.queue_declare(q, durable=True)

    @property
    def commands(self) -> str:
        return f"{self.unique}.commands"

    @property
    def result_queue(self) -> str:
        return f"{self.unique}.results"

    @property
    def manager_hb(self) -> str:
        return f"{self.unique}.mgr-hb"

    def info(self, queue: str) -> QueueInfo:
        return QueueInfo(self.url, queue, "", queue, {"delivery_mode": 2})

    def creds(self, uep: str) -> dict[str, Any]:
        def block(queue: str) -> dict[str, Any]:
            kwargs = {"exchange": "", "routing_key": queue, "mandatory": True}
            return {"connection_url": self.url, "queue": queue, "queue_publish_kwargs": kwargs}

        for q in (f"{uep}.tasks", f"{uep}.hb"):
            self.ch.queue_declare(q, durable=True)
        return {
            "endpoint_id": uep,
            "task_queue_info": block(f"{uep}.tasks"),
            "result_queue_info": block(self.result_queue),
            "heartbeat_queue_info": block(f"{uep}.hb"),
        }

    def command(
        self,
        uep: str,
        opts: dict[str, Any] | None = None,
        *,
        identity: str = OWNER,
        age: int = 0,
        name: str = "cmd_start_endpoint",
        content_type: str = "application/json",
    ) -> None:
        doc = {
            "command": name,
            "args": [],
            "kwargs": {
                "name": f"uep.test.{uep[:8]}",
                "amqp_creds": self.creds(uep),
                "user_opts": opts or {},
                "user_runtime": {"python": {"version": "3.11.99"}},
            },
            "globus_effective_identity": identity,
            "globus_identity_set": [{"sub": identity}],
            "globus_username": "someone@example.org",
        }
        self.raw_command(json.dumps(doc).encode(), content_type, int(time.time()) - age)

    def raw_command(self, body: bytes, content_type: str | None, timestamp: int | None) -> None:
        props = pika.BasicProperties(
            content_type=content_type, timestamp=timestamp, delivery_mode=2
        )
        self.ch.basic_publish("", self.commands, body, props)

    def task(self, uep: str, fn: Callable[..., Any], *args: Any) -> str:
        tid = str(uuid.uuid4())
        buf = pack_buffers([DillCodeSource().serialize(fn)])
        buf += pack_buffers([serialize(args), serialize({})])
        headers = {"task_uuid": tid, "function_uuid": str(uuid.uuid4())}
        props = pika.BasicProperties(headers=headers, delivery_mode=2)
        self.ch.basic_publish("", f"{uep}.tasks", pack(Task(task_id=tid, task_buffer=buf)), props)
        return tid

    def result(self, tid: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while tid not in self.results:
            assert time.monotonic() < deadline, f"no result for {tid}"
            method, _p, body = self.ch.basic_get(self.result_queue, auto_ack=True)
            if method is None:
                self.conn.sleep(0.05)
                continue
            res = unpack_as(body, Result)
            self.results[str(res.task_id)] = res
        res = self.results[tid]
        assert res.error_details is None, res.data
        return deserialize(res.data)

    def beats(self, queue: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            method, _p, body = self.ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append(unpack_as(body, EPStatusReport).global_state)

    def wait_beat(
        self, queue: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for state in self.beats(queue):
                if pred(state):
                    return state
            self.conn.sleep(0.1)
        raise AssertionError(f"no matching heartbeat on {queue}")

    def failure(self, uep: str, timeout: float = 30) -> str:
        return str(self.wait_beat(f"{uep}.hb", lambda s: "error" in s, timeout)["error"])


@dataclass
class Running:
    manager: Manager
    thread: threading.Thread
    ep_dir: Path

    def audit(self, event: str | None = None) -> list[dict[str, Any]]:
        rows = read_audit(self.ep_dir / AUDIT_FILE)
        return [r for r in rows if event is None or r["event"] == event]

    def wait_audit(self, event: str, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.audit(event)) < n:
            assert time.monotonic() < deadline, f"fewer than {n} {event} records: {self.audit()}"
            time.sleep(0.05)
        return self.audit(event)

    def stop(self) -> None:
        self.manager.request_stop()
        self.thread.join(60)
        assert not self.thread.is_alive()


@pytest.fixture
def service(amqp_url: str, unique: str) -> Iterator[Service]:
    s = Service(amqp_url, unique)
    yield s
    s.conn.close()


Start = Callable[..., Running]


@pytest.fixture
def start_manager(service: Service, tmp_path: Path) -> Iterator[Start]:
    started: list[Running] = []

    def start(
        launcher: str = "fork",
        authorizer: Authorizer | None = None,
        user_env: str = "",
        privileged: bool = False,
        **config: Any,
    ) -> Running:
        ep_dir = tmp_path / "mgr"
        ep_dir.mkdir(exist_ok=True)
        (ep_dir / "user_config_template.yaml.j2").write_text(TEMPLATE)
        (ep_dir / "user_config_schema.json").write_text(json.dumps(SCHEMA))
        uep_dir = tmp_path / "ueps"
        (ep_dir / "user_environment.yaml").write_text(
            user_env or f"GLOBUS_COMPUTE_USER_DIR: {uep_dir}\nFROM_USER_ENV: 'yes'\n"
        )
        settings = ManagerSettings(
            endpoint_id=str(uuid.uuid4()),
            ep_dir=ep_dir,
            config=ManagerConfig(heartbeat_period=5, **config),
            commands=service.info(service.commands),
            heartbeats=service.info(service.manager_hb),
            privileged=privileged,
            launcher=launcher,
        )
        manager = Manager(settings, authorizer or OwnerAuthorizer(frozenset({OWNER})))
        thread = threading.Thread(target=manager.run, daemon=True)
        thread.start()
        running = Running(manager, thread, ep_dir)
        started.append(running)
        service.wait_beat(service.manager_hb, lambda s: s.get("heartbeat_period") == 5)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


def new_uep() -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize("launcher", ["fork", "exec"])
def test_a_start_command_runs_a_user_endpoint_that_serves_its_tasks(
    service: Service, start_manager: Start, launcher: str
) -> None:
    mgr = start_manager(launcher=launcher)
    uep = new_uep()
    service.command(uep, {"workers": 1})
    info = service.result(service.task(uep, describe_process))
    (start,) = mgr.wait_audit("start", 1)
    assert start["pid"] == info["pid"] and start["uep_id"] == uep
    assert start["identity"] == OWNER and start["local_user"] == LocalUser.current().name
    assert info["name"] == f"uep.test.{uep[:8]}" and info["python"] == "3.11.99"
    assert info["extra"] == "yes" and info["secret"] is None and info["nnp"] == "1"
    hb = service.wait_beat(f"{uep}.hb", lambda s: "config_raw" in s)
    assert "max_workers: 1" in hb["config_raw"]


def test_the_same_config_reuses_its_user_endpoint_and_refreshes_its_credentials(
    service: Service, start_manager: Start, tmp_path: Path
) -> None:
    mgr = start_manager()
    uep = new_uep()
    service.command(uep, {"workers": 1})
    first = service.result(service.task(uep, describe_process))
    service.command(uep, {"workers": 1})
    second = service.result(service.task(uep, describe_process))
    assert first["pid"] == second["pid"]
    assert len(mgr.audit("start")) == 1
    log = tmp_path / "ueps" / f"uep.test.{uep[:8]}" / "endpoint.log"
    deadline = time.monotonic() + 10
    while "credentials refreshed" not in log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_two_configs_run_two_user_endpoints(service: Service, start_manager: Start) -> None:
    mgr = start_manager()
    a, b = new_uep(), new_uep()
    service.command(a, {"workers": 1})
    service.command(b, {"workers": 2})
    pa = service.result(service.task(a, describe_process))["pid"]
    pb = service.result(service.task(b, describe_process))["pid"]
    assert pa != pb
    starts = mgr.wait_audit("start", 2)
    assert len({s["config_hash"] for s in starts}) == 2


def test_a_changed_config_restarts_the_user_endpoint(
    service: Service, start_manager: Start
) -> None:
    mgr = start_manager()
    uep = new_uep()
    service.command(uep, {"workers": 1})
    old = service.result(service.task(uep, describe_process))["pid"]
    service.command(uep, {"workers": 3})
    (stop,) = mgr.wait_audit("stop", 1)
    assert stop["pid"] == old and stop["exit_status"] == 0
    starts = mgr.wait_audit("start", 2)
    assert starts[0]["config_hash"] != starts[1]["config_hash"]
    assert service.result(service.task(uep, describe_process))["pid"] == starts[1]["pid"]


def test_refused_commands_fail_fast_and_the_manager_carries_on(
    service: Service, start_manager: Start
) -> None:
    mgr = start_manager()
    bad_schema, stranger, stale, unknown = (new_uep() for _ in range(4))
    service.command(bad_schema, {"workers": "lots"})
    assert "workers: 'lots' is not of type 'integer'" in service.failure(bad_schema)
    service.command(stranger, identity=STRANGER)
    assert "untrusted identity" in service.failure(stranger)
    service.command(stale, age=600)
    assert "stale" in service.failure(stale)
    service.command(unknown, name="cmd_reboot")
    assert "unknown command 'cmd_reboot'" in service.failure(unknown)
    service.raw_command(b"\x00 not json", "application/json", int(time.time()))
    service.raw_command(b"{}", None, None)
    good = new_uep()
    service.command(good)
    assert service.result(service.task(good, describe_process))["uid"] == os.getuid()
    assert len(mgr.audit("refused")) == 2 and len(mgr.audit("start")) == 1


def test_the_number_of_user_endpoints_is_bounded(service: Service, start_manager: Start) -> None:
    start_manager(max_user_endpoints=1)
    first, second = new_uep(), new_uep()
    service.command(first)
    service.result(service.task(first, describe_process))
    service.command(second)
    assert "max_user_endpoints" in service.failure(second)


def test_a_user_endpoint_that_cannot_start_is_reported_with_its_reason(
    service: Service, start_manager: Start
) -> None:
    mgr = start_manager()
    uep = new_uep()
    service.command(uep, {"setup": "echo no scratch space; exit 3"})
    error = service.failure(uep)
    assert "endpoint_setup exited with 3" in error and "no scratch space" in error
    (stop,) = mgr.wait_audit("stop", 1)
    assert stop["exit_status"] == 78


def test_a_killed_user_endpoint_is_reported_and_the_next_command_starts_it(
    service: Service, start_manager: Start
) -> None:
    mgr = start_manager()
    uep = new_uep()
    service.command(uep)
    pid = service.result(service.task(uep, describe_process))["pid"]
    os.kill(pid, signal.SIGKILL)
    gone = service.wait_beat(f"{uep}.hb", lambda s: s.get("active") is False and "reason" in s)
    assert gone["exit_status"] == -9 and "SIGKILL" in gone["reason"]
    (stop,) = mgr.wait_audit("stop", 1)
    assert stop["exit_status"] == -9
    service.command(uep)
    assert service.result(service.task(uep, describe_process))["pid"] != pid


def test_shutdown_stops_user_endpoints_and_says_goodbye(
    service: Service, start_manager: Start
) -> None:
    mgr = start_manager()
    uep = new_uep()
    service.command(uep)
    service.result(service.task(uep, describe_process))
    mgr.stop()
    assert [r["event"] for r in mgr.audit()][-2:] == ["stop", "manager_stop"]
    assert any(s.get("heartbeat_period") == 0 for s in service.beats(service.manager_hb))
    assert any(s.get("active") is False for s in service.beats(f"{uep}.hb"))


def test_credentials_never_touch_the_disk(
    service: Service, start_manager: Start, tmp_path: Path
) -> None:
    mgr = start_manager()
    uep = new_uep()
    service.command(uep)
    service.result(service.task(uep, describe_process))
    service.command(uep)  # a refresh too
    time.sleep(0.5)
    mgr.stop()
    secret = service.url.split("@")[0]  # amqp://user:password
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_dead_spawner_is_replaced_and_its_user_endpoints_stop(
    service: Service, start_manager: Start
) -> None:
    mgr = start_manager()
    uep = new_uep()
    service.command(uep)
    pid = service.result(service.task(uep, describe_process))["pid"]
    helper = mgr.manager.launcher._proc  # type: ignore[attr-defined]
    helper.kill()
    # The user endpoint's control pipe closes with the manager's record of it: it stops.
    gone = service.wait_beat(f"{uep}.hb", lambda s: s.get("active") is False and "reason" in s)
    assert gone["reason"] == "the user endpoint process was lost (its spawner died)"
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and "zombie" not in _state(pid):
        assert time.monotonic() < deadline, "the orphaned user endpoint kept running"
        time.sleep(0.1)
    service.command(uep)
    assert service.result(service.task(uep, describe_process))["pid"] != pid


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(line for line in f if line.startswith("State")).lower()
    except OSError:
        return "zombie"
