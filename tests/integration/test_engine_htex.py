"""GlobusComputeEngine specifics: Parsl options, providers, scaling, batching, bad state,
encryption, clean shutdown, and GlobusMPIEngine.

Real Parsl processes on loopback (LocalProvider); nothing is faked.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import ValidationError

from endpoint.config.htex import GlobusComputeEngineConfig
from endpoint.engines.build import build_engine_from_dict
from endpoint.engines.htex.engine import GlobusComputeEngine
from endpoint.engines.htex.mpi import GlobusMPIEngine
from endpoint.errors import ConfigError, LifecycleError
from tests.unit.test_engines import (
    EPID,
    Results,
    add,
    kill_own_worker,
    ok,
    submission,
    wait_for_file,
    wait_until,
)

LOCAL = {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 0, "max_blocks": 1}
FAST: dict[str, Any] = {
    "address": "127.0.0.1",
    "heartbeat_period": 1,
    "heartbeat_threshold": 3,
    "job_status_kwargs": {"strategy_period": 0.5},
}


def spin(seconds: float) -> str:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    return "done"


def parsl_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k.startswith("PARSL_")}


def engine_processes(engine: GlobusComputeEngine, run_dir: Path) -> list[psutil.Process]:
    """The interchange, the worker pools started for ``run_dir``, and all their children."""
    roots = [psutil.Process(engine.executor.interchange_proc.pid)]
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "process_worker_pool" in cmdline and str(run_dir) in cmdline:
            roots.append(proc)
    found = {p.pid: p for p in roots}
    for root in roots:
        found.update({c.pid: c for c in root.children(recursive=True)})
    return list(found.values())


def all_gone(procs: list[psutil.Process]) -> bool:
    return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)


def _calls_from_this_thread(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str) -> list[Any]:
    """Records each call of ``obj.name`` made by the calling thread (the engine's own threads
    keep calling it, unrecorded)."""
    calls: list[Any] = []
    real = getattr(obj, name)
    me = threading.get_ident()

    def recording(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == me:
            calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, recording)
    return calls


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Any]:
    """fresh(**options) -> (engine, results): a started engine, shut down after the test."""
    started: list[GlobusComputeEngine] = []

    def _start(kind: str = "GlobusComputeEngine", **options: Any) -> Any:
        results = Results()
        engine = build_engine_from_dict({"type": kind, **FAST, **options})
        assert isinstance(engine, GlobusComputeEngine)
        engine.start(endpoint_id=EPID, run_dir=tmp_path, on_result=results)
        started.append(engine)
        return engine, results

    yield _start
    for engine in started:
        engine.shutdown(wait=False)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    run_dir = tmp_path_factory.mktemp("gce")
    results = Results()
    engine = build_engine_from_dict(
        {"type": "GlobusComputeEngine", "max_workers_per_node": 2, "provider": LOCAL, **FAST}
    )
    engine.start(endpoint_id=EPID, run_dir=run_dir, on_result=results)
    yield engine, results, run_dir
    engine.shutdown(wait=True)
    assert not results.duplicates


# ---- configuration ------------------------------------------------------------------------


def test_htex_options_pass_through() -> None:
    engine = build_engine_from_dict(
        {
            "type": "GlobusComputeEngine",
            "max_workers_per_node": 3,
            "available_accelerators": [0, 1],
            "cores_per_worker": 0.5,
            "mem_per_worker": 0.25,
            "cpu_affinity": "block",
            "prefetch_capacity": 2,
            "heartbeat_period": 7,
            "heartbeat_threshold": 21,
            "poll_period": 5,
            "drain_period": 3600,
            "worker_ports": [50123, 50124],
            "worker_port_range": [51000, 52000],
            "interchange_port_range": [52000, 53000],
            "worker_debug": True,
            "address_probe_timeout": 9,
            "manager_selector": {"type": "BlockIdManagerSelector"},
            "encrypted": False,
            "address": "127.0.0.1",
        }
    )
    assert isinstance(engine, GlobusComputeEngine)
    ex = engine.executor
    assert ex.label == "GlobusComputeEngine-HighThroughputExecutor"
    assert ex.max_workers_per_node == 3 and ex.available_accelerators == ["0", "1"]
    assert ex.workers_per_node == 2  # one worker per accelerator
    assert (ex.cores_per_worker, ex.mem_per_worker, ex.cpu_affinity) == (0.5, 0.25, "block")
    assert (ex.prefetch_capacity, ex.heartbeat_period, ex.heartbeat_threshold) == (2, 7, 21)
    assert (ex.poll_period, ex.drain_period, ex.address_probe_timeout) == (5, 3600, 9)
    assert ex.worker_port == 50123  # today's HTEX listens on one worker port
    assert ex.worker_port_range == (51000, 52000)
    assert ex.interchange_port_range == (52000, 53000)
    assert ex.worker_debug is True and ex.encrypted is False
    assert type(ex.manager_selector).__name__ == "BlockIdManagerSelector"
    assert ex.address == "127.0.0.1"


def test_workers_and_interchange_start_without_path() -> None:
    ex = GlobusComputeEngine(GlobusComputeEngineConfig()).executor
    assert ex.launch_cmd.startswith(
        f"{sys.executable} -m parsl.executors.high_throughput.process_worker_pool "
    )
    assert "{block_id}" in ex.launch_cmd and "--cert_dir {cert_dir}" in ex.launch_cmd
    assert ex.interchange_launch_cmd == [
        sys.executable,
        "-m",
        "parsl.executors.high_throughput.interchange",
    ]


def test_defaults_match_the_official_engine() -> None:
    # Every default comes from the model; the engine only builds what it describes.
    engine = GlobusComputeEngine(GlobusComputeEngineConfig())
    ex = engine.executor
    assert ex.encrypted is True  # the official GlobusComputeEngine default
    assert type(ex.provider).__name__ == "LocalProvider"
    assert (ex.provider.init_blocks, ex.provider.min_blocks, ex.provider.max_blocks) == (1, 0, 1)
    assert ex.address == "127.0.0.1"  # LocalProvider: workers are on this host
    assert engine.scaling == {"max_idletime": 120.0, "strategy": "simple", "strategy_period": 5.0}
    assert engine.max_retries == 0 and engine.working_dir == Path("tasks_working_dir")
    assert engine.run_in_sandbox is False and engine.result_size_limit == 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_wokers_per_node": 2}, "max_wokers_per_node"),
        ({"heartbeat_period": "often"}, "heartbeat_period"),
        ({"enable_mpi_mode": True}, "GlobusMPIEngine"),
        ({"mpi_launcher": "srun"}, "GlobusMPIEngine"),
        ({"container_type": "docker"}, "needs container_uri"),
        ({"container_type": "docker", "container_uri": "i", "container_cmd_options": "'"}, "shell"),
        ({"provider": {"type": "SlurmProvder"}}, "SlurmProvder"),
        ({"provider": {"type": "LocalProvider", "nodes": 2}}, "provider.nodes"),
        ({"job_status_kwargs": {"strategy": "greedy"}}, r"job_status_kwargs\.strategy"),
        ({"job_status_kwargs": {"max_idle": 3}}, "max_idle"),
        ({"task_batch_size": 0}, "task_batch_size"),
        ({"worker_port": 1, "worker_ports": [2, 3]}, "worker_ports"),
        ({"manager_selector": "Fastest"}, "manager_selector"),
        ({"address": {"type": "address_by_interface", "ifname": "nope0"}}, "address"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_engine_from_dict({"type": "GlobusComputeEngine", **options})


def test_unknown_option_when_the_model_is_made_directly() -> None:
    unknown: dict[str, Any] = {"bogus_option": 1}  # a dict: mypy would refuse the keyword
    # An engine only takes a model, and a model with an unknown option cannot be made.
    with pytest.raises(ValidationError, match="bogus_option"):
        GlobusComputeEngineConfig(**unknown)


def test_any_provider_and_launcher_by_type() -> None:
    slurm = build_engine_from_dict(
        {
            "type": "GlobusComputeEngine",
            "provider": {
                "type": "SlurmProvider",
                "partition": "debug",
                "account": "proj1",
                "worker_init": "module load python",
                "nodes_per_block": 2,
                "launcher": {"type": "SrunLauncher"},
            },
        }
    )
    assert isinstance(slurm, GlobusComputeEngine)
    provider = slurm.executor.provider
    assert type(provider).__name__ == "SlurmProvider"
    assert type(provider.launcher).__name__ == "SrunLauncher"
    assert provider.worker_init.strip() == "module load python"
    assert slurm.executor.address is None  # a cluster: Parsl's default, every address
    status = slurm.status()
    assert (status["provider_type"], status["queue"], status["account"]) == (
        "SlurmProvider",
        "debug",
        "proj1",
    )
    assert status["nodes_per_block"] == 2
    pbs = build_engine_from_dict(
        {"type": "GlobusComputeEngine", "provider": {"type": "PBSProProvider", "queue": "q"}}
    )
    assert pbs.status()["provider_type"] == "PBSProProvider" and pbs.status()["queue"] == "q"


def test_address_from_an_address_function() -> None:
    engine = build_engine_from_dict(
        {"type": "GlobusComputeEngine", "address": {"type": "address_by_interface", "ifname": "lo"}}
    )
    assert isinstance(engine, GlobusComputeEngine)
    assert engine.executor.address == "127.0.0.1"


def test_deprecated_strategy_and_job_status_kwargs() -> None:
    engine = build_engine_from_dict(
        {
            "type": "GlobusComputeEngine",
            "strategy": "none",
            "job_status_kwargs": {"max_idletime": 3},
        }
    )
    assert isinstance(engine, GlobusComputeEngine)
    assert engine.scaling == {"max_idletime": 3.0, "strategy": "none", "strategy_period": 5.0}
    assert engine.status()["scaling_enabled"] is False


# ---- a running engine ---------------------------------------------------------------------


def test_batching_gives_every_task_exactly_one_result(shared: Any) -> None:
    engine, results, _ = shared
    warm = submission(add, 0)
    engine.submit(warm)
    results.wait(warm.task_id)
    messages_before = engine.executor._task_counter
    subs = [submission(add, i) for i in range(3000)]
    for sub in subs:
        engine.submit(sub)
    got = results.wait(*(s.task_id for s in subs), timeout=120)
    assert [ok(r) for r in got] == [i + 2 for i in range(3000)]
    assert not results.duplicates
    messages = engine.executor._task_counter - messages_before
    assert messages < len(subs) / 4, f"{messages} Parsl messages for {len(subs)} tasks"


def test_a_lone_task_travels_alone(shared: Any) -> None:
    engine, results, _ = shared
    wait_until(lambda: engine.status()["outstanding_tasks"] == 0)
    before = engine.executor._task_counter
    sub = submission(add, 1)
    engine.submit(sub)
    assert ok(results.wait(sub.task_id)[0]) == 3
    assert engine.executor._task_counter == before + 1


def test_a_crash_inside_a_batch_is_charged_to_its_task_only(shared: Any) -> None:
    engine, results, _ = shared  # max_retries_on_system_failure=0
    before = [submission(add, i) for i in range(300)]
    killer = submission(kill_own_worker)
    after = [submission(add, i) for i in range(300)]
    for sub in [*before, killer, *after]:
        engine.submit(sub)
    (lost,) = results.wait(killer.task_id, timeout=60)
    assert lost.error_details is not None and lost.error_details["code"] == "WorkerLost"
    assert "attempt 1:" in lost.data and "attempt 2" not in lost.data
    assert "WorkerLost" in lost.data and "Traceback" in lost.data
    others = results.wait(*(s.task_id for s in [*before, *after]), timeout=60)
    assert [ok(r) for r in others] == [i + 2 for i in range(300)] * 2
    assert not results.duplicates


def test_encrypted_by_default_with_certificates_under_run_dir(shared: Any) -> None:
    engine, _, run_dir = shared
    assert engine.executor.encrypted is True
    certs = run_dir / "parsl" / "GlobusComputeEngine-HighThroughputExecutor" / "certificates"
    assert any(certs.iterdir()), f"no CurveZMQ certificates in {certs}"
    assert any((run_dir / "submit_scripts").glob("*.sh"))


def test_status_from_the_live_executor(
    shared: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, results, _ = shared
    wait_until(lambda: engine.status()["idle_workers"] == 2)
    gate = tmp_path / "gate"
    subs = [submission(wait_for_file, str(gate)) for _ in range(2)]
    for sub in subs:
        engine.submit(sub)
    wait_until(lambda: engine.status()["running_tasks"] == 2)
    status = engine.status()
    assert status["idle_workers"] == 0 and status["outstanding_tasks"] == 2
    assert status["managers"] == status["active_managers"] == 1
    assert status["blocks"] and set(status["blocks"]) <= {"PENDING", "RUNNING"}
    (nodes,) = status["node_info"].values()
    assert nodes[0]["worker_count"] == 2 and nodes[0]["python_version"]
    json.dumps(status, allow_nan=False)  # heartbeats carry it as JSON
    asked = _calls_from_this_thread(monkeypatch, engine.executor.command_client, "run")
    polled = _calls_from_this_thread(monkeypatch, engine.executor.provider, "status")
    for _ in range(100):
        engine.status()
    # Cheap because it answers from what the watcher last saw: never a round trip.
    assert asked == [] and polled == [], "status() asked the interchange or the provider"
    gate.touch()
    results.wait(*(s.task_id for s in subs))


def test_start_to_first_result_then_clean_shutdown(
    fresh: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unstarted = GlobusComputeEngine(GlobusComputeEngineConfig())
    with pytest.raises(LifecycleError, match="not started"):
        unstarted.submit(submission(add, 1))
    # Neither Parsl's scripts nor ours on PATH: only the system's shell tools.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    engine, results = fresh(provider=LOCAL, max_workers_per_node=1)
    sub = submission(add, 1)
    engine.submit(sub)
    # How soon is a figure, not a test: bench/startup.py (`make bench-startup`) prints it.
    assert ok(results.wait(sub.task_id)[0]) == 3
    procs = engine_processes(engine, tmp_path)
    assert len(procs) >= 3  # interchange, the worker pool, its worker
    engine.shutdown(wait=True)
    wait_until(lambda: all_gone(procs), timeout=15)
    with pytest.raises(LifecycleError, match="shut down"):
        engine.submit(submission(add, 1))


def test_shutdown_without_wait_abandons_the_running_task_and_leaves_nothing(
    fresh: Any, tmp_path: Path
) -> None:
    engine, results = fresh(provider=LOCAL, max_workers_per_node=1)
    sub = submission(add, 1)
    engine.submit(sub)
    results.wait(sub.task_id)
    spinning = submission(spin, 600)
    engine.submit(spinning)
    wait_until(lambda: engine.status()["running_tasks"] == 1)
    procs = engine_processes(engine, tmp_path)
    engine.shutdown(wait=False)
    # It did not wait for the ten-minute task: that task never gets a Result...
    assert spinning.task_id not in results.by_id
    # ...and its worker goes with everything else.
    wait_until(lambda: all_gone(procs), timeout=15)
    assert spinning.task_id not in results.by_id


def test_scales_out_within_max_blocks_and_in_after_idle(fresh: Any, tmp_path: Path) -> None:
    engine, results = fresh(
        max_workers_per_node=1,
        encrypted=False,
        provider={"type": "LocalProvider", "init_blocks": 1, "min_blocks": 0, "max_blocks": 2},
        job_status_kwargs={"strategy_period": 0.3, "max_idletime": 1},
    )
    gate = tmp_path / "gate"
    subs = [submission(wait_for_file, str(gate)) for _ in range(4)]
    for sub in subs:
        engine.submit(sub)
    wait_until(lambda: engine.status()["active_managers"] == 2, timeout=30)
    time.sleep(1.5)  # several more strategy periods with 4 tasks queued on 2 slots
    assert len(engine.executor.blocks_to_job_id) == 2  # never more than max_blocks
    gate.touch()
    assert [ok(r) for r in results.wait(*(s.task_id for s in subs))] == ["released"] * 4

    def scaled_in() -> bool:
        status = engine.status()
        live = sum(status["blocks"].get(s, 0) for s in ("PENDING", "RUNNING"))
        return bool(live == 0 and status["active_managers"] == 0)

    wait_until(scaled_in, timeout=30)
    assert engine.status()["blocks"].get("SCALED_IN") == 2


def test_failing_blocks_fail_tasks_with_the_reason(fresh: Any) -> None:
    engine, results = fresh(provider={**LOCAL, "worker_init": "echo no python here >&2; exit 3"})
    subs = [submission(add, i) for i in range(10)]
    for sub in subs:
        engine.submit(sub)
    # The block breaker (3 failed blocks in a row by default) trips after three status
    # polls of the provider.
    failures = results.wait(*(s.task_id for s in subs), timeout=240)
    for failure in failures:
        assert failure.error_details is not None
        assert failure.error_details["code"] == "EngineFailure"
        assert "3 batch jobs in a row ended before any worker connected" in failure.data
        assert "no python here" in failure.data  # the tail of the job's stderr
        # Where to look: each block's job id, how it ended, and its submit script.
        assert re.search(r"block 0: job \d+, MISSING \(exit code 3\)", failure.data)
        assert re.search(r"submit script: /\S+submit_scripts/parsl\.", failure.data)
    # The breaker trips in Parsl's poll, before its strategy could submit one more block.
    assert len(engine.executor.blocks_to_job_id) == 3
    late = submission(add, 1)
    engine.submit(late)
    (refused,) = results.wait(late.task_id)
    assert refused.error_details is not None and refused.error_details["code"] == "EngineFailure"


def test_resource_specification_priority_only(fresh: Any) -> None:
    engine, results = fresh(provider=LOCAL, max_workers_per_node=1)
    good = submission(add, 1)
    good.resource_specification = {"priority": 1}
    bad = submission(add, 1)
    bad.resource_specification = {"num_nodes": 2}
    engine.submit(good)
    engine.submit(bad)
    assert ok(results.wait(good.task_id)[0]) == 3
    (refused,) = results.wait(bad.task_id)
    assert refused.error_details is not None
    assert refused.error_details["code"] == "ResourceSpecificationNotSupported"
    assert "num_nodes" in refused.data


def test_mpi_engine_runs_tasks_with_a_resource_specification(fresh: Any, tmp_path: Path) -> None:
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("localhost\n")
    provider = {
        **LOCAL,
        "worker_init": f"export PBS_NODEFILE={nodefile}",  # MPI mode asks the scheduler
        "launcher": {"type": "SimpleLauncher"},
    }
    engine, results = fresh("GlobusMPIEngine", provider=provider, max_workers_per_block=1)
    assert isinstance(engine, GlobusMPIEngine)
    plain = submission(add, 1)
    engine.submit(plain)
    (refused,) = results.wait(plain.task_id)
    assert refused.error_details is not None
    assert refused.error_details["code"] == "ResourceSpecificationNotSupported"
    sub = submission(parsl_env)
    sub.resource_specification = {"num_nodes": 1, "ranks_per_node": 2}
    engine.submit(sub)
    env = ok(results.wait(sub.task_id, timeout=60)[0])
    assert env["PARSL_NUM_NODES"] == "1" and env["PARSL_NUM_RANKS"] == "2"
    assert env["PARSL_MPI_PREFIX"].startswith("mpiexec -n 2")


def test_a_dead_interchange_fails_tasks_instead_of_hanging(fresh: Any, tmp_path: Path) -> None:
    engine, results = fresh(provider=LOCAL, max_workers_per_node=1)
    gate = tmp_path / "gate"
    held = submission(wait_for_file, str(gate))
    engine.submit(held)
    wait_until(lambda: engine.status()["running_tasks"] == 1)
    procs = engine_processes(engine, tmp_path)
    engine.executor.interchange_proc.kill()  # our child: Parsl's interchange
    (failure,) = results.wait(held.task_id)
    assert failure.error_details is not None
    assert failure.error_details["code"] == "EngineFailure"
    assert "interchange exited unexpectedly" in failure.data
    engine.shutdown(wait=True)
    wait_until(lambda: all_gone(procs), timeout=15)
