"""The manager's loop without a broker or processes: stub sessions (`stub_amqp.py`) and a
fake `Launcher` whose "children" are the pipe ends a real user endpoint would hold.

`tests/unit/test_manager_flow.py` checks the same manager end to end against RabbitMQ with
real user endpoint processes; these check the loop's own promises and orders, fast: a command
is acked before anything is done about it, a refusal reaches the user endpoint's heartbeat
queue as a startup-failure heartbeat, the manager heartbeats, and on stop its user endpoints
are stopped before its final heartbeat, which goes out before its sessions close.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from endpoint.amqp.queues import QueueInfo
from endpoint.amqp.session import Outgoing
from endpoint.config import ManagerConfig
from endpoint.manager import core
from endpoint.manager.audit import AUDIT_FILE
from endpoint.manager.audit import read as read_audit
from endpoint.manager.core import FAILURE_PERIOD, Manager, ManagerSettings
from endpoint.manager.identity import LocalUser, OwnerAuthorizer
from endpoint.manager.spawner import SpawnSpec
from endpoint.protocol.messages import EPStatusReport, unpack_as
from endpoint.protocol.pipe import encode
from tests.unit.stub_amqp import DEADLINE_S, StubBroker, StubSession, confirm_all

OWNER = "aaaaaaaa-0000-0000-0000-000000000001"
STRANGER = "bbbbbbbb-0000-0000-0000-000000000002"
COMMANDS, BEATS = "amqp-commands", "amqp-heartbeats"
COMMANDS_URL, HB_URL = "amqp://stub-commands/", "amqp://stub-heartbeats/"
TEMPLATE = """\
engine:
  type: ThreadPoolEngine
  max_workers: {{ workers|default(2) }}
"""
SCHEMA = {"type": "object", "properties": {"workers": {"type": "integer", "minimum": 1}}}


@dataclass
class FakeChild:
    """A user endpoint that never runs: the test reads its control pipe, writes its status."""

    pid: int
    spec: SpawnSpec
    control_fd: int
    status_fd: int
    _buffer: bytes = b""

    def read_message(self) -> dict[str, Any]:
        """The next JSON line the manager wrote on the control pipe."""
        deadline = time.monotonic() + DEADLINE_S
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0, "nothing arrived on the control pipe"
            ready, _, _ = select.select([self.control_fd], [], [], left)
            if ready:
                chunk = os.read(self.control_fd, 65536)
                assert chunk, "the manager closed the control pipe"
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def report(self, message: dict[str, Any]) -> None:
        os.write(self.status_fd, encode(message))

    def close(self) -> None:
        for fd in (self.control_fd, self.status_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class FakeLauncher:
    """A `Launcher` that spawns nothing; SIGTERM/SIGKILL "end" a child at once."""

    def __init__(self, broker: StubBroker) -> None:
        self.broker = broker
        self.on_exit: Callable[[int, int | None], None] | None = None
        self.children: dict[int, FakeChild] = {}
        self._next_pid = 40000
        self._lock = threading.Lock()

    def spawn(self, spec: SpawnSpec, control_fd: int, status_fd: int) -> int:
        with self._lock:
            self._next_pid += 1
            pid = self._next_pid
            # Hold the ends as a child would (the manager closes its copies after this).
            self.children[pid] = FakeChild(pid, spec, os.dup(control_fd), os.dup(status_fd))
        self.broker.record("launcher", "spawn", info={"pid": pid})
        return pid

    def signal(self, pid: int, sig: int) -> None:
        self.broker.record("launcher", "signal", info={"pid": pid, "sig": sig})
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self.exit(pid, 0 if sig == signal.SIGTERM else -signal.SIGKILL)

    def exit(self, pid: int, status: int | None) -> None:
        """The child ends with wait status `status` (as the spawner would report it)."""
        with self._lock:
            child = self.children.pop(pid, None)
        if child is None:
            return
        child.close()
        assert self.on_exit is not None
        self.on_exit(pid, status)

    def close(self) -> None:
        self.broker.record("launcher", "close")
        with self._lock:
            children, self.children = list(self.children.values()), {}
        for child in children:
            child.close()

    def only_child(self) -> FakeChild:
        with self._lock:
            (child,) = self.children.values()
            return child


@dataclass
class Running:
    manager: Manager
    broker: StubBroker
    launcher: FakeLauncher
    ep_dir: Path
    thread: threading.Thread
    uep_creds: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def commands(self) -> StubSession:
        return self.broker.sessions[COMMANDS]

    @property
    def beats(self) -> StubSession:
        return self.broker.sessions[BEATS]

    def command(
        self,
        uep: str,
        opts: dict[str, Any] | None = None,
        *,
        identity: str = OWNER,
        age: int = 0,
        name: str = "cmd_start_endpoint",
        hb_url: str = HB_URL,
    ) -> tuple[int, int]:
        creds = self.uep_creds.setdefault(uep, creds_for(uep, hb_url))
        doc = {
            "command": name,
            "args": [],
            "kwargs": {
                "name": f"uep-{uep[:8]}",
                "amqp_creds": creds,
                "user_opts": opts or {},
                "user_runtime": {"python": {"version": "3.11.99"}},
            },
            "globus_effective_identity": identity,
            "globus_identity_set": [{"sub": identity}],
            "globus_username": "someone@example.org",
        }
        return self.raw(json.dumps(doc).encode(), "application/json", int(time.time()) - age)

    def raw(self, body: bytes, content_type: str | None, timestamp: int | None) -> tuple[int, int]:
        return self.commands.deliver(body, content_type=content_type, timestamp=timestamp)

    def wait_acked(self, generation: int, tag: int) -> None:
        self.broker.wait_op(
            lambda op: (
                op.source == COMMANDS
                and op.kind == "ack"
                and (op.generation, op.tag) == (generation, tag)
            ),
            f"the ack of command {generation}/{tag}",
        )

    def uep_reports(self, uep: str) -> list[dict[str, Any]]:
        """Every heartbeat the manager sent for `uep`, decoded (its `global_state`)."""
        out = []
        for msg in self.broker.published(BEATS, "uep-status:"):
            if msg.routing_key == f"{uep}.hb":
                report: EPStatusReport = unpack_as(msg.body, EPStatusReport)
                assert report.endpoint_id == uep
                out.append(report.global_state)
        return out

    def wait_uep_report(self, uep: str) -> dict[str, Any]:
        reports = self.broker.wait_for(lambda: self.uep_reports(uep), f"a report for {uep}")
        return reports[0]

    def own_beats(self) -> list[dict[str, Any]]:
        return [
            unpack_as(m.body, EPStatusReport).global_state
            for m in self.broker.published(BEATS)
            if m.routing_key == "mgr.hb"
        ]

    def audit(self, event: str) -> list[dict[str, Any]]:
        return [r for r in read_audit(self.ep_dir / AUDIT_FILE) if r["event"] == event]

    def stop(self) -> None:
        self.manager.request_stop()
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive(), "the manager did not stop"


def creds_for(uep: str, url: str) -> dict[str, Any]:
    def block(queue: str) -> dict[str, Any]:
        kwargs = {"exchange": "", "routing_key": queue, "mandatory": True}
        return {"connection_url": url, "queue": queue, "queue_publish_kwargs": kwargs}

    return {
        "endpoint_id": uep,
        "task_queue_info": block(f"{uep}.tasks"),
        "result_queue_info": block("results"),
        "heartbeat_queue_info": block(f"{uep}.hb"),
    }


Start = Callable[..., Running]


@pytest.fixture(autouse=True)
def keep_the_process_title(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop runs inside pytest: leave pytest's name in `ps` alone."""
    monkeypatch.setattr(core, "set_title", lambda _title: None)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    started: list[Running] = []

    def run(heartbeat_period: float = 5, **config: Any) -> Running:
        ep_dir = tmp_path / f"mgr{len(started)}"
        ep_dir.mkdir()
        (ep_dir / "user_config_template.yaml.j2").write_text(TEMPLATE)
        (ep_dir / "user_config_schema.json").write_text(json.dumps(SCHEMA))
        cfg = ManagerConfig(**config)
        # The config's floor (5 s) is for production; a quick loop is what is tested here.
        cfg = cfg.model_copy(update={"heartbeat_period": heartbeat_period})
        settings = ManagerSettings(
            endpoint_id=str(uuid.uuid4()),
            ep_dir=ep_dir,
            config=cfg,
            commands=QueueInfo(COMMANDS_URL, "mgr.commands", "", "mgr.commands", {}),
            heartbeats=QueueInfo(HB_URL, "mgr.hb", "", "mgr.hb", {}),
        )
        broker = StubBroker(confirm=confirm_all)
        launcher = FakeLauncher(broker)
        manager = Manager(
            settings,
            OwnerAuthorizer(frozenset({OWNER})),
            launcher=launcher,
            sessions=broker,
        )
        launcher.on_exit = manager._on_exit
        thread = threading.Thread(target=manager.run, name="manager", daemon=True)
        running = Running(manager, broker, launcher, ep_dir, thread)
        started.append(running)
        thread.start()
        sessions = list(broker.sessions.values())
        broker.wait_for(lambda: all(s.started for s in sessions), "the sessions to start")
        for s in sessions:
            s.connect()
        return running

    yield run
    for running in started:
        if running.thread.is_alive():
            running.manager.request_stop()
            running.thread.join(DEADLINE_S)
        running.launcher.close()


def test_a_command_is_acked_before_its_user_endpoint_starts(start: Start) -> None:
    mgr = start()
    uep = str(uuid.uuid4())
    gen, tag = mgr.command(uep, {"workers": 1})
    spawn = mgr.broker.wait_op(lambda op: op.kind == "spawn", "the spawn")
    (ack,) = mgr.broker.ops(COMMANDS, "ack")
    # At most once: acked (alone) before anything is done about it.
    assert (ack.generation, ack.tag, ack.multiple, ack.stale) == (gen, tag, False, False)
    assert ack.seq < spawn.seq
    child = mgr.launcher.only_child()
    assert child.spec.user == LocalUser.current()
    assert child.spec.env["GLOBUS_COMPUTE_ENDPOINT_NAME"] == f"uep-{uep[:8]}"
    assert child.spec.env["GC_USER_PYTHON_VERSION"] == "3.11.99"
    launch = child.read_message()
    assert (launch["op"], launch["endpoint_id"]) == ("launch", uep)
    assert launch["amqp_creds"] == mgr.uep_creds[uep]
    assert "max_workers: 1" in launch["config"]
    assert launch["ep_info"]["manager_id"] == mgr.manager.s.endpoint_id
    (started,) = mgr.broker.wait_for(lambda: mgr.audit("start"), "the audit record")
    assert (started["uep_id"], started["pid"]) == (uep, child.pid)

    # The same config again: no second process, fresh credentials over the control pipe.
    gen2, tag2 = mgr.command(uep, {"workers": 1})
    assert child.read_message() == {"op": "credentials", "amqp_creds": mgr.uep_creds[uep]}
    mgr.wait_acked(gen2, tag2)
    assert len(mgr.broker.ops("launcher", "spawn")) == 1
    assert not mgr.uep_reports(uep)
    child.report({"ready": True})
    mgr.stop()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"identity": STRANGER}, "untrusted identity"),
        ({"age": 600}, "stale"),
        ({"name": "cmd_reboot"}, "unknown command 'cmd_reboot'"),
        ({"opts": {"workers": "lots"}}, "workers: 'lots' is not of type 'integer'"),
    ],
)
def test_a_refusal_is_a_startup_failure_heartbeat_for_its_user_endpoint(
    start: Start, options: dict[str, Any], expected: str
) -> None:
    mgr = start()
    uep = str(uuid.uuid4())
    gen, tag = mgr.command(uep, **options)
    report = mgr.wait_uep_report(uep)
    assert set(report) == {"error", "heartbeat_period"}
    assert expected in report["error"] and report["heartbeat_period"] == FAILURE_PERIOD
    ack = mgr.broker.first(lambda op: op.source == COMMANDS and op.kind == "ack", "the ack")
    assert (ack.generation, ack.tag) == (gen, tag)
    (publish,) = [op for op in mgr.broker.ops(BEATS, "publish") if op.keys[0].startswith("uep")]
    assert ack.seq < publish.seq
    (msg,) = publish.messages
    assert (msg.exchange, msg.routing_key) == ("", f"{uep}.hb")
    assert not mgr.broker.ops("launcher", "spawn")
    mgr.stop()


def test_unreadable_commands_are_acked_and_the_manager_carries_on(start: Start) -> None:
    mgr = start(max_user_endpoints=1)
    junk = [
        mgr.raw(b"\x00 not json", "application/json", int(time.time())),
        mgr.raw(b"{}", None, None),
    ]
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    mgr.command(first)
    mgr.broker.wait_op(lambda op: op.kind == "spawn", "the first spawn")
    mgr.command(second)
    assert "max_user_endpoints" in mgr.wait_uep_report(second)["error"]
    acked = {(op.generation, op.tag) for op in mgr.broker.ops(COMMANDS, "ack")}
    assert set(junk) <= acked and len(acked) == 4
    # Nobody to tell about the junk: only the refused second endpoint heard anything.
    assert len(mgr.broker.published(BEATS, "uep-status:")) == 1
    assert not mgr.uep_reports(first)
    assert len(mgr.broker.ops("launcher", "spawn")) == 1
    mgr.launcher.only_child().report({"ready": True})
    mgr.stop()


def test_a_refusal_for_another_broker_goes_out_on_a_connection_of_its_own(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[QueueInfo, Outgoing]] = []
    done = threading.Event()

    def publish_once(info: QueueInfo, out: Outgoing) -> None:
        sent.append((info, out))
        done.set()

    monkeypatch.setattr(core, "_publish_once", publish_once)
    mgr = start()
    uep = str(uuid.uuid4())
    mgr.command(uep, identity=STRANGER, hb_url="amqp://elsewhere/")
    assert done.wait(DEADLINE_S)
    ((info, out),) = sent
    assert (info.connection_url, out.routing_key) == ("amqp://elsewhere/", f"{uep}.hb")
    assert "untrusted identity" in unpack_as(out.body, EPStatusReport).global_state["error"]
    assert not mgr.broker.published(BEATS, "uep-status:")
    mgr.stop()


def test_the_manager_heartbeats_at_once_and_then_every_period(start: Start) -> None:
    mgr = start(heartbeat_period=0.2, max_user_endpoints=3)
    hello = mgr.broker.wait_for(lambda: mgr.own_beats(), "the hello heartbeat")[0]
    assert hello == {"heartbeat_period": 0.2, "user_endpoints": 0, "max_user_endpoints": 3}
    connect = mgr.broker.first(lambda op: op.source == BEATS and op.kind == "connect")
    first = mgr.broker.first(lambda op: op.source == BEATS and op.kind == "publish")
    assert connect.seq < first.seq
    mgr.command(str(uuid.uuid4()))
    beats = mgr.broker.wait_for(
        lambda: [b for b in mgr.own_beats() if b["user_endpoints"] == 1], "a periodic heartbeat"
    )
    assert beats[0]["heartbeat_period"] == 0.2
    mgr.launcher.only_child().report({"ready": True})
    mgr.stop()


def test_stop_ends_user_endpoints_then_sends_the_final_heartbeat_then_closes(
    start: Start,
) -> None:
    mgr = start()
    ueps = [str(uuid.uuid4()), str(uuid.uuid4())]
    for uep in ueps:
        mgr.command(uep)
    mgr.broker.wait_for(lambda: len(mgr.launcher.children) == 2, "two user endpoints")
    for child in list(mgr.launcher.children.values()):
        child.report({"ready": True})
    mgr.stop()

    terms = [op for op in mgr.broker.ops("launcher", "signal") if op.info["sig"] == signal.SIGTERM]
    assert len(terms) == 2
    final = mgr.broker.first(
        lambda op: op.kind == "publish" and op.keys == ("final-heartbeat",), "final heartbeat"
    )
    assert unpack_as(final.messages[0].body, EPStatusReport).global_state["heartbeat_period"] == 0
    stops = mgr.broker.ops(kind="stop")
    assert {op.source for op in stops} == {COMMANDS, BEATS}
    (close,) = mgr.broker.ops("launcher", "close")
    assert max(op.seq for op in terms) < final.seq < min(op.seq for op in stops) < close.seq
    # Stopped cleanly, by us: nothing to report to the service for either user endpoint.
    assert all(not mgr.uep_reports(uep) for uep in ueps)
    assert [r["exit_status"] for r in mgr.audit("stop")] == [0, 0]
    assert len(mgr.audit("manager_stop")) == 1


def test_a_user_endpoint_that_dies_is_reported_with_its_reason(start: Start) -> None:
    mgr = start()
    never, crashed = str(uuid.uuid4()), str(uuid.uuid4())
    mgr.command(never)
    mgr.broker.wait_for(lambda: len(mgr.launcher.children) == 1, "the first user endpoint")
    child = mgr.launcher.only_child()
    child.report({"error": "endpoint_setup exited with 3: no scratch space"})
    mgr.launcher.exit(child.pid, 78)
    report = mgr.wait_uep_report(never)
    assert report == {
        "error": "endpoint_setup exited with 3: no scratch space",
        "heartbeat_period": FAILURE_PERIOD,
    }

    mgr.command(crashed)
    mgr.broker.wait_for(lambda: len(mgr.launcher.children) == 1, "the second user endpoint")
    child = mgr.launcher.only_child()
    child.report({"ready": True})
    mgr.launcher.exit(child.pid, -signal.SIGKILL)
    gone = mgr.wait_uep_report(crashed)
    assert gone["active"] is False and gone["exit_status"] == -signal.SIGKILL
    assert "SIGKILL" in gone["reason"]
    mgr.stop()
