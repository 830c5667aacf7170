"""Prometheus metrics scraped from real processes: a private RabbitMQ, our web service (run by
its CLI with a metrics token), endpoints started by `compute-endpoint start` on each engine
(ThreadPoolEngine, ProcessPoolEngine, GlobusComputeEngine with a LocalProvider block), one
endpoint without ``metrics_port``, and a manager with a user endpoint.

One stack for the module: every test scrapes the same processes. Counters must move by exactly
the tasks sent, and each histogram must count each task once.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import local_gce_engine
from endpoint.host.status import read_status
from endpoint.protocol.serialize import pack_buffers, serialize
from tests.fault.harness import FaultStack, values

pytestmark = pytest.mark.integration

TOKEN = "metrics-token-5c1e9a77d2b04f3e"
COMMON = "heartbeat_period: 5\nmetrics_port: 0\n"
ENGINES: dict[str, str] = {
    "ThreadPoolEngine": "engine:\n  type: ThreadPoolEngine\n  max_workers: 2\n",
    "ProcessPoolEngine": "engine:\n  type: ProcessPoolEngine\n  max_workers: 2\n",
    "GlobusComputeEngine": "engine:\n" + local_gce_engine(),
}
PLAIN = "plain"  # an endpoint without metrics_port
MANAGER = "mgr"
TEMPLATE = """\
engine:
  type: ThreadPoolEngine
  max_workers: {{ workers|default(1) }}
heartbeat_period: 5
metrics_port: 0
"""
SCHEMA = {
    "type": "object",
    "properties": {"workers": {"type": "integer", "minimum": 1, "maximum": 2}},
    "additionalProperties": False,
}
N = 5

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class MetricsStack(FaultStack):
    """The fault harness's stack, with the web service's /metrics behind a token."""

    def __init__(self) -> None:
        super().__init__()
        self.token_file = self.root / "metrics.token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, TOKEN.encode() + b"\n")
        os.close(fd)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        if name == "webservice":
            argv = [*argv, "--metrics-token-file", str(self.token_file)]
        super()._spawn(name, argv, env)


@dataclass
class Ep:
    endpoint_id: str
    ep_dir: Path

    @property
    def status(self) -> dict[str, Any]:
        return read_status(self.ep_dir) or {}

    @property
    def url(self) -> str:
        where = self.status["metrics"]
        return f"http://{where['address']}:{where['port']}/metrics"


def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def listening_ports(pid: int) -> set[tuple[str, int]]:
    conns = psutil.Process(pid).net_connections(kind="inet")
    return {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}


@pytest.fixture(scope="module")
def stack() -> Iterator[MetricsStack]:
    s = MetricsStack()
    try:
        s.start_service()
        yield s
    finally:
        s.close()


def _start(stack: MetricsStack, name: str, config: str, timeout: float = 180) -> Ep:
    ep_dir = stack.configure_endpoint(name, config)
    return Ep(stack.start_endpoint(name, timeout=timeout), ep_dir)


@pytest.fixture(scope="module")
def endpoints(stack: MetricsStack) -> dict[str, Ep]:
    eps = {kind: _start(stack, kind, COMMON + text) for kind, text in ENGINES.items()}
    eps[PLAIN] = _start(stack, PLAIN, "heartbeat_period: 5\n" + ENGINES["ThreadPoolEngine"])
    return eps


@pytest.mark.parametrize("kind", list(ENGINES))
def test_counters_move_and_histograms_count_each_task_once(
    stack: MetricsStack, endpoints: dict[str, Ep], kind: str
) -> None:
    ep = endpoints[kind]
    before = scrape(ep.url)
    # N that succeed and one that raises (time.sleep("x")): RemoteExecutionError.
    _tasks, group = stack.submit(ep.endpoint_id, "work", [(i, 0) for i in range(N)], None)
    _bad, bad_group = stack.submit(ep.endpoint_id, "work", [(99, "x")], None)
    results = stack.collect(group, N, timeout=240) + stack.collect(bad_group, 1, timeout=120)
    assert sorted(values(results).values()) == list(range(N)), stack.log_text(f"endpoint:{kind}")

    def moved(name: str, **labels: str) -> float:
        return value(scrape(ep.url), name, **labels) - value(before, name, **labels)

    # A result is counted completed when the broker confirms it, just after it was delivered.
    wait_for(lambda: moved("compute_endpoint_tasks_completed_total") >= N + 1, 60, "confirms")
    after = scrape(ep.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("compute_endpoint_tasks_received_total") == N + 1
    assert delta("compute_endpoint_tasks_completed_total") == N + 1
    assert delta("compute_endpoint_tasks_succeeded_total") == N
    assert delta("compute_endpoint_tasks_failed_total", reason="RemoteExecutionError") == 1
    for histogram in ("task_queue_wait", "task_run", "result_publish"):
        name = f"compute_endpoint_{histogram}_seconds_count"
        assert delta(name) == N + 1, name
        assert delta(f"compute_endpoint_{histogram}_seconds_sum") >= 0
    assert value(after, "compute_endpoint_tasks_running") == 0
    assert value(after, "compute_endpoint_journal_depth") == 0
    assert value(after, "compute_endpoint_results_unconfirmed") == 0
    # Roles whose URLs match share one session: at least the task queue's.
    sessions = {dict(k[1])["session"]: v for k, v in after.items() if k[0].endswith("session_up")}
    assert "amqp-tasks" in sessions and set(sessions.values()) == {1.0}, sessions
    assert ("compute_endpoint_credentials_age_seconds", frozenset()) in after
    assert value(after, "compute_endpoint_breaker_open", kind="blocks") == 0


@pytest.mark.parametrize("kind", list(ENGINES))
def test_engine_gauges_come_from_the_heartbeat_snapshot(
    endpoints: dict[str, Ep], kind: str
) -> None:
    ep = endpoints[kind]

    def workers() -> float:
        samples = scrape(ep.url)
        idle = value(samples, "compute_endpoint_engine_workers", state="idle")
        return idle + value(samples, "compute_endpoint_engine_workers", state="busy")

    wait_for(lambda: workers() == 2, 60, "two workers reported")
    samples = scrape(ep.url)
    age = value(samples, "compute_endpoint_last_heartbeat_age_seconds")
    assert 0 <= age < 60
    if kind == "GlobusComputeEngine":
        assert value(samples, "compute_endpoint_blocks", state="running") == 1
        assert value(samples, "compute_endpoint_blocks_failed") == 0


def test_the_metrics_port_listens_on_loopback_only_when_configured(
    endpoints: dict[str, Ep],
) -> None:
    for kind in ENGINES:
        doc = endpoints[kind].status
        where = doc["metrics"]
        assert where["address"] == "127.0.0.1" and where["port"] > 0
        assert ("127.0.0.1", where["port"]) in listening_ports(doc["pid"])
    plain = endpoints[PLAIN].status
    assert plain["state"] == "running" and plain["metrics"] is None
    assert listening_ports(plain["pid"]) == set()


def test_no_label_names_a_task_or_an_endpoint(
    stack: MetricsStack, endpoints: dict[str, Ep]
) -> None:
    ids = {ep.endpoint_id for ep in endpoints.values()}
    texts = [
        urllib.request.urlopen(endpoints[kind].url, timeout=30).read().decode() for kind in ENGINES
    ]
    req = urllib.request.Request(
        f"{stack.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    texts.append(urllib.request.urlopen(req, timeout=30).read().decode())
    for text in texts:
        assert not any(i in text for i in ids)


# ---- the web service -----------------------------------------------------------------------


def _status_of(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30):
            return 200
    except urllib.error.HTTPError as e:
        e.close()
        return e.code


def test_the_service_metrics_need_the_token(stack: MetricsStack) -> None:
    url = f"{stack.url}/metrics"
    wrong_same_length = "x" * len(TOKEN)
    for headers in (
        {},
        {"Authorization": f"Bearer {wrong_same_length}"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        # A compute API token is not a metrics token.
        {"Authorization": f"Bearer {stack.token()}"},
    ):
        assert _status_of(url, headers) == 401, headers
    assert _status_of(url, {"Authorization": f"Bearer {TOKEN}"}) == 200


def test_the_service_counts_routes_by_template(
    stack: MetricsStack, endpoints: dict[str, Ep]
) -> None:
    before = scrape(f"{stack.url}/metrics", TOKEN)
    ep = endpoints["ThreadPoolEngine"]
    _tasks, group = stack.submit(ep.endpoint_id, "work", [(1, 0), (2, 0)], None)
    assert len(stack.collect(group, 2, timeout=120)) == 2
    after = scrape(f"{stack.url}/metrics", TOKEN)
    submit = {"route": "/v3/endpoints/{endpoint_id}/submit", "method": "POST", "status": "200"}

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("compute_service_requests_total", **submit) == 1
    assert delta("compute_service_submit_seconds_count") == 1
    assert value(after, "compute_service_broker_connected") == 1
    assert value(after, "compute_service_endpoints", state="online") >= len(endpoints)
    assert value(after, "compute_service_tasks", state="success") >= 2
    assert ("compute_service_forwarder_backlog_results", frozenset()) in after
    assert value(after, "compute_service_forwarder_lag_seconds") >= 0
    assert ("compute_service_forwarder_lag_seconds", frozenset()) in after
    # Raw paths never become labels: every route label is a template or "unmatched".
    routes = {dict(labels).get("route", "") for (_name, labels) in after}
    assert not any(ep.endpoint_id in r for r in routes)


# ---- a manager and its user endpoint -------------------------------------------------------


@pytest.fixture(scope="module")
def manager(stack: MetricsStack) -> Ep:
    config = (
        f"display_name: {MANAGER}\nheartbeat_period: 5\nmetrics_port: 0\nemail: t@example.org\n"
    )
    ep_dir = stack.configure_endpoint(MANAGER, config)
    (ep_dir / "user_config_template.yaml.j2").write_text(TEMPLATE)
    (ep_dir / "user_config_schema.json").write_text(json.dumps(SCHEMA))
    (ep_dir / "user_environment.yaml").write_text(
        f"GLOBUS_COMPUTE_USER_DIR: {stack.root / 'uep-user'}\n"
    )
    return Ep(stack.start_endpoint(MANAGER, timeout=120), ep_dir)


def _submit_to_manager(stack: MetricsStack, manager_id: str, cfg: dict[str, Any]) -> str:
    fid = stack.function_id("work")
    payload = pack_buffers([serialize((7, 0)), serialize({})])
    body = {"tasks": {fid: [payload]}, "create_queue": True, "user_endpoint_config": cfg}
    reply = stack.api("POST", f"/v3/endpoints/{manager_id}/submit", body)
    return str(reply["task_group_id"])


def test_a_manager_counts_its_user_endpoints_spawns_and_refusals(
    stack: MetricsStack, manager: Ep
) -> None:
    group = _submit_to_manager(stack, manager.endpoint_id, {"workers": 1})
    results = stack.collect(group, 1, timeout=180)
    assert list(values(results).values()) == [7], stack.log_text(f"endpoint:{MANAGER}")
    samples = scrape(manager.url)
    assert value(samples, "compute_endpoint_user_endpoints", state="running") == 1
    assert value(samples, "compute_endpoint_user_endpoint_spawn_seconds_count") == 1
    assert (
        value(samples, "compute_endpoint_user_endpoint_start_failures_total", reason="refused") == 0
    )
    assert ("127.0.0.1", manager.status["metrics"]["port"]) in listening_ports(
        manager.status["pid"]
    )

    # The user endpoint serves its own metrics (metrics_port: 0 from the template).
    [uep_status] = [p for p in (stack.root / "uep-user").rglob("status.json")]
    uep = Ep("", uep_status.parent)
    wait_for(lambda: uep.status.get("metrics") is not None, 60, "the user endpoint's metrics")
    assert value(scrape(uep.url), "compute_endpoint_tasks_received_total") == 1

    # A config the schema refuses (workers: 9) is a start failure, and spawns nothing.
    _submit_to_manager(stack, manager.endpoint_id, {"workers": 9})
    wait_for(
        lambda: value(
            scrape(manager.url), "compute_endpoint_user_endpoint_start_failures_total",
            reason="refused",
        ) == 1,
        60,
        "the refusal counted",
    )  # fmt: skip
    samples = scrape(manager.url)
    assert value(samples, "compute_endpoint_user_endpoint_spawn_seconds_count") == 1
