"""The config models: defaults, kinds, engines, refused keys, and errors with their lines."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from endpoint.config import (
    EndpointConfig,
    EngineConfig,
    ManagerConfig,
    describe,
    load_config_text,
    retired,
)
from endpoint.config.engines import ProcessPoolEngineConfig, ThreadPoolEngineConfig
from endpoint.config.htex import GlobusComputeEngineConfig, GlobusMPIEngineConfig
from endpoint.errors import ConfigError

SUB = "9a7e0f7e-1b2c-4d3e-8f90-a1b2c3d4e5f6"
ADMIN = "3f2e1d0c-b9a8-4765-8432-10fedcba9876"


def user(text: str) -> EndpointConfig:
    cfg = load_config_text(text)
    assert isinstance(cfg, EndpointConfig)
    return cfg


def manager(text: str, base_dir: Path | None = None) -> ManagerConfig:
    cfg = load_config_text(text, base_dir=base_dir)
    assert isinstance(cfg, ManagerConfig)
    return cfg


def error(text: str, base_dir: Path | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config_text(text, base_dir=base_dir)
    return str(err.value)


def engine(body: str) -> EngineConfig:
    return user("engine:\n" + body).engine


# ---- defaults ----------------------------------------------------------------------------

BASE_DEFAULTS: dict[str, Any] = {
    "display_name": None,
    "allowed_functions": None,
    "authentication_policy": None,
    "subscription_id": None,
    "admins": None,
    "high_assurance": False,
    "amqp_port": None,
    "heartbeat_period": 30.0,
    "environment": None,
    "local_compute_services": False,
    "debug": False,
}


def test_user_endpoint_defaults_match_the_official_endpoint() -> None:
    cfg = user("engine:\n  type: ThreadPoolEngine\n")
    for key, value in BASE_DEFAULTS.items():
        assert getattr(cfg, key) == value, key
    assert cfg.idle_heartbeats_soft == 0
    assert cfg.idle_heartbeats_hard == 5760
    assert cfg.endpoint_setup is None and cfg.endpoint_teardown is None
    assert cfg.paths.endpoint_dir is None and cfg.paths.endpoint_log is None
    assert cfg.prefetch_count == 256


def test_manager_defaults_match_the_official_endpoint() -> None:
    cfg = manager("")
    for key, value in BASE_DEFAULTS.items():
        assert getattr(cfg, key) == value, key
    assert cfg.public is False and cfg.email is None
    assert cfg.identity_mapping_config_path is None
    assert cfg.user_config_template_path is None and cfg.user_config_schema_path is None
    assert cfg.audit_log_path is None
    assert cfg.pam.enable is False and cfg.pam.service_name == "globus-compute-endpoint"
    assert cfg.mu_child_ep_grace_period_s == 30.0
    assert cfg.max_user_endpoints == 32


@pytest.mark.parametrize(
    "kind", ["ThreadPoolEngine", "ProcessPoolEngine", "GlobusComputeEngine", "GlobusMPIEngine"]
)
def test_every_engine_shares_the_base_engine_defaults(kind: str) -> None:
    eng = engine(f"  type: {kind}\n")
    assert eng.type == kind
    assert eng.label is None
    assert eng.max_retries_on_system_failure == 0
    assert eng.working_dir == "tasks_working_dir"
    assert eng.run_in_sandbox is False
    assert eng.allowed_serializers is None
    assert eng.result_size_limit == 10 * 1024 * 1024


def test_pool_engine_defaults() -> None:
    thread = engine("  type: ThreadPoolEngine\n")
    process = engine("  type: ProcessPoolEngine\n")
    assert isinstance(thread, ThreadPoolEngineConfig) and thread.max_workers is None
    assert isinstance(process, ProcessPoolEngineConfig)
    assert process.max_workers is None and process.max_tasks_per_child is None


def test_globus_compute_engine_defaults() -> None:
    eng = engine("  type: GlobusComputeEngine\n")
    assert isinstance(eng, GlobusComputeEngineConfig)
    assert eng.encrypted is True
    assert eng.container_type is None and eng.container_uri is None
    assert eng.container_cmd_options is None
    jsk = eng.job_status_kwargs
    assert (jsk.max_idletime, jsk.strategy, jsk.strategy_period) == (120.0, "simple", 5.0)
    assert eng.task_batch_size == 64
    assert eng.provider == {"type": "LocalProvider"}
    assert eng.address is None
    assert eng.htex_options == {}


def test_mpi_engine_defaults() -> None:
    eng = engine("  type: GlobusMPIEngine\n")
    assert isinstance(eng, GlobusMPIEngineConfig)
    assert eng.mpi_launcher == "mpiexec" and eng.max_workers_per_block == 1
    assert eng.encrypted is True


# ---- which kind of document --------------------------------------------------------------


def test_a_document_with_engine_is_a_user_endpoint_and_without_is_a_manager() -> None:
    assert isinstance(load_config_text("engine:\n  type: ThreadPoolEngine\n"), EndpointConfig)
    assert isinstance(load_config_text("display_name: m\n"), ManagerConfig)
    assert isinstance(load_config_text(""), ManagerConfig)
    assert isinstance(load_config_text("# only a comment\n"), ManagerConfig)


def test_engine_null_is_an_error_not_a_manager() -> None:
    msg = error("engine:\n")
    assert "engine (line 1): must be a mapping with a 'type' key" in msg


def test_the_removed_mode_key_is_refused_but_a_transitional_property_remains() -> None:
    assert "mode (line 1): removed" in error("mode: manager\n")
    assert user("engine: {type: ThreadPoolEngine}\n").mode == "single_user"
    assert manager("").mode == "manager"


# ---- engine union ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "model"),
    [
        ("ThreadPoolEngine", ThreadPoolEngineConfig),
        ("ProcessPoolEngine", ProcessPoolEngineConfig),
        ("GlobusComputeEngine", GlobusComputeEngineConfig),
        ("GlobusMPIEngine", GlobusMPIEngineConfig),
    ],
)
def test_type_selects_the_engine_model(kind: str, model: type[EngineConfig]) -> None:
    assert type(engine(f"  type: {kind}\n")) is model


def test_an_engine_without_type_is_a_globus_compute_engine() -> None:
    # The documented 3.x behaviour; the official 4.15 rejects this (features.md §8.16).
    eng = engine("  max_workers_per_node: 2\n")
    assert isinstance(eng, GlobusComputeEngineConfig)
    assert eng.engine_spec()["type"] == "GlobusComputeEngine"
    assert isinstance(user("engine: {}\n").engine, GlobusComputeEngineConfig)


def test_an_unknown_engine_type_lists_only_real_engines() -> None:
    msg = error("engine:\n  type: FancyEngine\n")
    assert "engine.type (line 2): 'FancyEngine' is not a valid engine type" in msg
    assert (
        "valid types: ThreadPoolEngine, ProcessPoolEngine, GlobusComputeEngine, GlobusMPIEngine"
    ) in msg
    assert "helper" not in msg and "base" not in msg


def test_removed_engine_types_say_what_replaced_them() -> None:
    msg = error("engine:\n  type: HighThroughputEngine\n")
    assert "removed in 3.0; use GlobusComputeEngine" in msg
    assert "wrapped by GlobusComputeEngine" in error("engine: {type: HighThroughputExecutor}\n")


def test_engine_must_be_a_mapping() -> None:
    assert "engine (line 1): must be a mapping" in error("engine: ThreadPoolEngine\n")


def test_models_are_frozen_and_programmatic_construction_works() -> None:
    cfg = EndpointConfig(engine=ThreadPoolEngineConfig(max_workers=2))
    assert cfg.engine.engine_spec() == {"type": "ThreadPoolEngine", "max_workers": 2}
    with pytest.raises(ValidationError):
        cfg.debug = True
    direct = EndpointConfig.model_validate({"engine": {"type": "ProcessPoolEngine"}})
    assert isinstance(direct.engine, ProcessPoolEngineConfig)


# ---- engine_spec -------------------------------------------------------------------------


def test_engine_spec_of_pool_engines_holds_only_what_was_set() -> None:
    thread = engine("  type: ThreadPoolEngine\n  max_workers: 4\n  label: null\n")
    assert thread.engine_spec() == {"type": "ThreadPoolEngine", "max_workers": 4}
    process = engine(
        "  type: ProcessPoolEngine\n  max_workers: 2\n  max_tasks_per_child: 10\n"
        "  max_retries_on_system_failure: 1\n  working_dir: /scratch/t\n"
    )
    assert process.engine_spec() == {
        "type": "ProcessPoolEngine",
        "max_workers": 2,
        "max_tasks_per_child": 10,
        "max_retries_on_system_failure": 1,
        "working_dir": "/scratch/t",
    }


def test_engine_spec_of_globus_compute_engine_flattens_executor_options() -> None:
    eng = engine(
        "  type: GlobusComputeEngine\n"
        "  max_workers_per_node: 2\n"
        "  worker_debug: null\n"
        "  encrypted: true\n"
        "  job_status_kwargs: {max_idletime: 60}\n"
        "  address: {type: address_by_interface, ifname: ib0}\n"
        "  provider:\n"
        "    type: SlurmProvider\n"
        "    partition: debug\n"
        "    account: null\n"
        "    launcher: {type: SrunLauncher}\n"
    )
    assert eng.engine_spec() == {
        "type": "GlobusComputeEngine",
        "encrypted": True,
        "job_status_kwargs": {"max_idletime": 60.0},
        "address": {"type": "address_by_interface", "ifname": "ib0"},
        "provider": {
            "type": "SlurmProvider",
            "partition": "debug",
            "launcher": {"type": "SrunLauncher"},
        },
        "max_workers_per_node": 2,
    }


def test_engine_spec_leaves_an_unset_provider_to_the_engine() -> None:
    eng = engine("  type: GlobusComputeEngine\n")
    assert isinstance(eng, GlobusComputeEngineConfig)
    assert eng.engine_spec() == {"type": "GlobusComputeEngine"}
    assert eng.provider == {"type": "LocalProvider"}  # what the model reports as the default


def test_engine_spec_of_mpi_engine() -> None:
    eng = engine("  type: GlobusMPIEngine\n  mpi_launcher: srun\n  worker_port: 5000\n")
    spec = eng.engine_spec()
    assert spec == {
        "type": "GlobusMPIEngine",
        "mpi_launcher": "srun",
        "worker_port": 5000,
    }


def test_null_engine_keys_mean_the_engine_default() -> None:
    eng = engine("  type: GlobusComputeEngine\n  encrypted: null\n  label: null\n")
    assert isinstance(eng, GlobusComputeEngineConfig) and eng.encrypted is True
    assert "encrypted" not in eng.engine_spec()


# ---- top-level keys ----------------------------------------------------------------------


def test_unknown_top_level_key_names_its_line_and_suggests_a_fix() -> None:
    msg = error("engine:\n  type: ThreadPoolEngine\nheartbeat_perod: 10\n")
    assert "heartbeat_perod (line 3): unknown key; did you mean 'heartbeat_period'?" in msg


@pytest.mark.parametrize("key", sorted(retired.TOP_LEVEL))
def test_removed_and_dead_top_level_keys_are_refused_with_the_reason(key: str) -> None:
    msg = error(f"engine:\n  type: ThreadPoolEngine\n{key}: 1\n")
    assert f"{key} (line 3): {retired.TOP_LEVEL[key]}" in msg


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("executors", "removed in 4.6; use engine:"),
        ("multi_user", "removed in 4.10.1"),
        ("force_mu_allow_same_user", "removed in 4.10.1"),
        ("detach_endpoint", "removed in 4.10.1; endpoints run in the foreground"),
        ("log_dir", "use paths.endpoint_log"),
        ("stdout", "use paths.endpoint_log"),
        ("stderr", "use paths.endpoint_log"),
    ],
)
def test_refusal_messages_say_what_to_use_instead(key: str, fragment: str) -> None:
    assert fragment in error(f"{key}: x\n")


@pytest.mark.parametrize(
    "line",
    [
        "email: a@b.c",
        "identity_mapping_config_path: /etc/idmap.json",
        "user_config_template_path: t.j2",
        "pam: {enable: true}",
        "mu_child_ep_grace_period_s: 3",
        "max_user_endpoints: 2",
    ],
)
def test_manager_keys_in_a_user_endpoint_config_are_refused(line: str) -> None:
    key = line.partition(":")[0]
    msg = error(f"engine:\n  type: ThreadPoolEngine\n{line}\n")
    assert f"{key} (line 3): only valid in a manager config" in msg


@pytest.mark.parametrize(
    "line",
    [
        "idle_heartbeats_soft: 3",
        "idle_heartbeats_hard: 3",
        "endpoint_setup: echo",
        "endpoint_teardown: echo",
        "paths: {}",
        "prefetch_count: 5",
    ],
)
def test_user_endpoint_keys_without_an_engine_explain_the_manager_rule(line: str) -> None:
    key = line.partition(":")[0]
    msg = error(f"display_name: x\n{line}\n")
    assert f"{key} (line 2): only valid in a user endpoint config; this file has no engine:" in msg


def test_high_assurance_is_refused_honestly() -> None:
    msg = error(f"subscription_id: {SUB}\nhigh_assurance: true\n")
    assert "high_assurance (line 2): not supported" in msg and "audit log" in msg
    msg = error(
        f"engine: {{type: ThreadPoolEngine}}\nhigh_assurance: true\nsubscription_id: {SUB}\n"
    )
    assert "high_assurance (line 2): not supported" in msg
    assert user("engine: {type: ThreadPoolEngine}\nhigh_assurance: false\n").high_assurance is False


def test_admins_need_a_subscription() -> None:
    msg = error(f"admins: [{ADMIN}]\n")
    assert "admins (line 1): needs subscription_id" in msg
    cfg = manager(f"admins: [{ADMIN}]\nsubscription_id: {SUB}\n")
    assert cfg.admins == [uuid.UUID(ADMIN)] and cfg.subscription_id == uuid.UUID(SUB)


def test_audit_log_path_is_refused_because_it_only_serves_high_assurance() -> None:
    msg = error("audit_log_path: /var/log/audit\n")
    assert "audit_log_path (line 1): only used by High-Assurance endpoints" in msg


def test_heartbeat_period_is_clamped_to_five_seconds_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert manager("heartbeat_period: 1\n").heartbeat_period == 5
    assert "below the minimum" in caplog.text
    assert manager("heartbeat_period: 7.5\n").heartbeat_period == 7.5


def test_display_name_none_string_becomes_null() -> None:
    assert manager("display_name: None\n").display_name is None
    assert manager("display_name: My EP\n").display_name == "My EP"


@pytest.mark.parametrize("port", [443, 5671, 5672])
def test_supported_amqp_ports(port: int) -> None:
    assert manager(f"amqp_port: {port}\n").amqp_port == port


def test_other_amqp_ports_are_refused_with_the_choices() -> None:
    assert "amqp_port (line 1): Input should be 443, 5671 or 5672" in error("amqp_port: 1234\n")


@pytest.mark.parametrize(("value", "ok"), [(1, True), (65535, True), (0, False), (65536, False)])
def test_prefetch_count_bounds(value: int, ok: bool) -> None:
    text = f"engine: {{type: ThreadPoolEngine}}\nprefetch_count: {value}\n"
    if ok:
        assert user(text).prefetch_count == value
    else:
        assert "prefetch_count (line 2)" in error(text)


def test_uuid_lists_name_the_bad_item() -> None:
    msg = error("allowed_functions:\n  - 5d1e2c1a-8f1b-4b8e-9f4e-2d0c8b3f6a11\n  - nope\n")
    assert "allowed_functions.1 (line 3): Input should be a valid UUID" in msg


def test_negative_idle_heartbeats_are_refused() -> None:
    assert "idle_heartbeats_soft (line 2)" in error(
        "engine: {type: ThreadPoolEngine}\nidle_heartbeats_soft: -1\n"
    )


# ---- paths -------------------------------------------------------------------------------


def test_paths_expand_home_and_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SCRATCH", "/scratch/me")
    cfg = user(
        "engine: {type: ThreadPoolEngine}\n"
        "paths:\n  endpoint_dir: ~/eps/one\n  endpoint_log: ${SCRATCH}/logs/one.log\n"
    )
    assert cfg.paths.endpoint_dir == tmp_path / "eps" / "one"
    assert cfg.paths.endpoint_log == Path("/scratch/me/logs/one.log")


def test_paths_with_an_unset_variable_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    msg = error("engine: {type: ThreadPoolEngine}\npaths:\n  endpoint_log: $NOT_SET_ANYWHERE/x\n")
    assert "paths.endpoint_log (line 3): environment variable NOT_SET_ANYWHERE is not set" in msg


def test_relative_paths_are_relative_to_the_config_directory(tmp_path: Path) -> None:
    cfg = load_config_text(
        "engine: {type: ThreadPoolEngine}\npaths: {endpoint_log: logs/ep.log}\n", base_dir=tmp_path
    )
    assert isinstance(cfg, EndpointConfig)
    assert cfg.paths.endpoint_log == tmp_path / "logs" / "ep.log"


def test_unknown_nested_keys_get_suggestions() -> None:
    msg = error("engine: {type: ThreadPoolEngine}\npaths:\n  endpoint_dri: /x\n")
    assert "paths.endpoint_dri (line 3): unknown key; did you mean 'endpoint_dir'?" in msg
    msg = error("pam:\n  enabel: 1\n")
    assert "pam.enabel (line 2): unknown key; did you mean 'enable'?" in msg


# ---- manager files -----------------------------------------------------------------------


def test_manager_files_must_exist_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "idmap.json").write_text("[]")
    cfg = manager("identity_mapping_config_path: idmap.json\n", base_dir=tmp_path)
    assert cfg.identity_mapping_config_path == tmp_path / "idmap.json"
    msg = error("user_config_template_path: missing.j2\n", base_dir=tmp_path)
    assert f"user_config_template_path (line 1): file not found: {tmp_path / 'missing.j2'}" in msg
    assert "user_config_schema_path (line 1): file not found" in error(
        "user_config_schema_path: /nonexistent/schema.json\n"
    )


def test_empty_manager_paths_mean_unset() -> None:
    assert manager("identity_mapping_config_path: ''\n").identity_mapping_config_path is None


def test_pam_block_turns_pam_on_unless_it_says_otherwise() -> None:
    # As upstream: the class default is enabled, the manager's default (no block) is not.
    assert manager("").pam.enable is False
    assert manager("pam:\n  service_name: compute\n").pam.enable is True
    assert manager("pam:\n  enable: false\n").pam.enable is False
    assert manager("pam:\n").pam.enable is False


# ---- engine keys -------------------------------------------------------------------------


def test_pool_engines_refuse_parsl_engine_options_with_a_hint() -> None:
    msg = error("engine:\n  type: ThreadPoolEngine\n  max_workers_per_node: 2\n  bogus: 1\n")
    assert (
        "engine.max_workers_per_node (line 3): an option of GlobusComputeEngine, not of"
        " ThreadPoolEngine"
    ) in msg
    assert "engine.bogus (line 4): unknown key" in msg
    # ProcessPoolEngine runs workers in containers too; threads cannot.
    msg = error("engine:\n  type: ThreadPoolEngine\n  container_type: docker\n")
    assert "an option of GlobusComputeEngine, not of ThreadPoolEngine" in msg


def test_pool_engine_worker_counts_must_be_positive() -> None:
    assert "engine.max_workers (line 3)" in error(
        "engine:\n  type: ThreadPoolEngine\n  max_workers: 0\n"
    )
    assert "engine.max_tasks_per_child (line 3)" in error(
        "engine:\n  type: ProcessPoolEngine\n  max_tasks_per_child: 0\n"
    )


def test_engine_base_options_are_checked() -> None:
    msg = error(
        "engine:\n  type: ThreadPoolEngine\n  max_retries_on_system_failure: -1\n"
        "  result_size_limit: 0\n  working_dir: ''\n"
    )
    assert "engine.max_retries_on_system_failure (line 3)" in msg
    assert "engine.result_size_limit (line 4)" in msg
    assert "engine.working_dir (line 5)" in msg


def test_allowed_serializers_need_code_and_data() -> None:
    msg = error(
        "engine:\n  type: ThreadPoolEngine\n  allowed_serializers:\n"
        "    - globus_compute_sdk.serialize.DillCodeSource\n"
    )
    assert "engine.allowed_serializers (line 3)" in msg
    assert "at least one code and one data" in msg
    msg = error("engine:\n  type: ThreadPoolEngine\n  allowed_serializers: [foo.Bar, foo.Baz]\n")
    assert "unknown serialization strategy 'foo.Bar'" in msg


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("enable_mpi_mode: true", "use type: GlobusMPIEngine"),
        ("mpi_launcher: srun", "an option of GlobusMPIEngine"),
        ("max_workers: 4", "Parsl renamed it max_workers_per_node"),
        ("max_workers_per_block: 2", "an option of GlobusMPIEngine"),
        ("executor: x", "a prebuilt Parsl executor can only be passed from Python"),
        ("interchange_launch_cmd: [x]", "the engine launches the interchange itself"),
        ("storage_access: []", "Parsl data staging is not used"),
        ("remote_monitoring_radio: {}", "Parsl monitoring is not wired"),
        ("worker_mode: singularity_reuse", "funcX container routing"),
        ("scheduler_mode: hard", "funcX container routing"),
        ("worker_max_idletime: 60", "use job_status_kwargs.max_idletime"),
    ],
)
def test_refused_engine_keys_say_why(key: str, fragment: str) -> None:
    name = key.partition(":")[0]
    msg = error(f"engine:\n  type: GlobusComputeEngine\n  {key}\n")
    assert f"engine.{name} (line 3): " in msg and fragment in msg


def test_executor_options_pass_through_with_checked_types() -> None:
    eng = engine(
        "  type: GlobusComputeEngine\n"
        "  max_workers_per_node: 3\n"
        "  cores_per_worker: 0.5\n"
        "  mem_per_worker: 2\n"
        "  worker_port_range: [50000, 51000]\n"
        "  heartbeat_threshold: 60\n"
        "  available_accelerators: [a, b]\n"
        "  cpu_affinity: list:0,1:2,3\n"
        "  block_error_handler: false\n"
        "  worker_logdir_root: /tmp/wl\n"
        "  launch_cmd: process_worker_pool.py {debug}\n"
        "  manager_selector: {type: BlockIdManagerSelector}\n"
    )
    assert isinstance(eng, GlobusComputeEngineConfig)
    assert eng.htex_options["worker_port_range"] == (50000, 51000)
    assert eng.htex_options["cores_per_worker"] == 0.5
    spec = eng.engine_spec()
    assert spec["max_workers_per_node"] == 3 and spec["block_error_handler"] is False
    assert spec["manager_selector"] == {"type": "BlockIdManagerSelector"}


def test_accelerator_ids_written_as_numbers_become_names() -> None:
    eng = engine("  available_accelerators: [0, 1]\n")
    assert eng.engine_spec()["available_accelerators"] == ["0", "1"]
    assert engine("  available_accelerators: 2\n").engine_spec()["available_accelerators"] == 2


def test_strategy_with_a_prebuilt_job_status_kwargs_is_refused() -> None:
    from endpoint.config.htex import JobStatusKwargs

    with pytest.raises(ValidationError, match="set it in job_status_kwargs instead"):
        GlobusComputeEngineConfig(strategy="none", job_status_kwargs=JobStatusKwargs())


def test_executor_option_errors_name_the_key_line_and_fix() -> None:
    msg = error(
        "engine:\n"
        "  type: GlobusComputeEngine\n"
        "  max_workers_per_nod: 2\n"
        "  heartbeat_period: often\n"
        "  init_blocks: 2\n"
        "  cpu_affinity: sideways\n"
        "  max_workers_per_node: 0\n"
        "  block_error_handler: maybe\n"
        "  manager_selector: {type: FancySelector}\n"
    )
    assert "engine.max_workers_per_nod (line 3): unknown key: not an option of" in msg
    assert "did you mean 'max_workers_per_node'?" in msg
    assert "engine.heartbeat_period (line 4): Input should be a valid integer" in msg
    assert "engine.init_blocks (line 5): an option of the provider; move it under" in msg
    assert "engine.cpu_affinity (line 6): must be none, block" in msg
    assert "engine.max_workers_per_node (line 7): must be at least 1" in msg
    assert "engine.block_error_handler (line 8): Input should be a valid boolean" in msg
    assert "engine.manager_selector.type (line 9): 'FancySelector' is not a valid" in msg


def test_mpi_engine_checks_against_mpi_executor() -> None:
    msg = error("engine:\n  type: GlobusMPIEngine\n  mpi_launcher: pbsdsh\n")
    assert "engine.mpi_launcher (line 3): Input should be 'mpiexec', 'srun' or 'aprun'" in msg
    # MPIExecutor has no per-node worker count; its blocks run max_workers_per_block.
    msg = error("engine:\n  type: GlobusMPIEngine\n  max_workers_per_node: 2\n")
    assert "not an option of GlobusMPIEngine or of Parsl's MPIExecutor" in msg
    msg = error("engine:\n  type: GlobusMPIEngine\n  max_workers_per_block: 0\n")
    assert "engine.max_workers_per_block (line 3)" in msg


def test_passthrough_bucket_cannot_be_written_directly() -> None:
    assert "engine.htex_options (line 3): unknown key" in error(
        "engine:\n  type: GlobusComputeEngine\n  htex_options: {}\n"
    )


# ---- deprecated spellings ----------------------------------------------------------------


def test_strategy_string_becomes_job_status_kwargs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        eng = engine("  type: GlobusComputeEngine\n  strategy: none\n")
    assert isinstance(eng, GlobusComputeEngineConfig)
    assert eng.job_status_kwargs.strategy == "none"
    assert "strategy" not in eng.engine_spec()
    assert eng.engine_spec()["job_status_kwargs"] == {"strategy": "none"}
    assert "deprecated" in caplog.text


def test_strategy_mapping_from_older_docs_is_converted() -> None:
    eng = engine("  strategy:\n    type: SimpleStrategy\n    max_idletime: 90\n")
    assert isinstance(eng, GlobusComputeEngineConfig)
    assert eng.job_status_kwargs.max_idletime == 90
    assert eng.job_status_kwargs.strategy == "simple"


def test_bad_or_conflicting_strategies_are_reported_in_place() -> None:
    msg = error("engine:\n  strategy: eager\n  worker_debug: sure\n")
    assert "engine.strategy (line 2): must be one of simple, none, htex_auto_scale" in msg
    assert "engine.worker_debug (line 3)" in msg  # reported together
    msg = error("engine:\n  strategy: {type: Clever}\n")
    assert "engine.strategy.type (line 2): unknown strategy 'Clever'" in msg
    msg = error("engine:\n  strategy: {type: SimpleStrategy, interval: 3}\n")
    assert "engine.strategy.interval (line 2): unknown key; use job_status_kwargs" in msg
    msg = error("engine:\n  strategy: none\n  job_status_kwargs: {strategy: simple}\n")
    assert "engine.strategy (line 2): conflicts with job_status_kwargs.strategy" in msg


def test_job_status_kwargs_are_checked() -> None:
    msg = error("engine:\n  job_status_kwargs:\n    strategy: sometimes\n    period: 3\n")
    assert "engine.job_status_kwargs.strategy (line 3)" in msg
    assert "engine.job_status_kwargs.period (line 4): unknown key" in msg


def test_worker_ports_becomes_worker_port() -> None:
    eng = engine("  worker_ports: [50001, 50002]\n")
    assert eng.engine_spec()["worker_port"] == 50001
    assert "worker_ports" not in eng.engine_spec()
    msg = error("engine:\n  worker_ports: [1, 2]\n  worker_port: 3\n")
    assert "engine.worker_ports (line 2): conflicts with worker_port" in msg
    assert "engine.worker_ports (line 2): must be a pair of ports" in error(
        "engine:\n  worker_ports: 5\n"
    )


# ---- containers --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["docker", "podman", "podman-hpc", "apptainer", "singularity"])
def test_image_based_containers_need_a_uri(kind: str) -> None:
    msg = error(f"engine:\n  container_type: {kind}\n")
    assert f"engine.container_type (line 2): {kind} needs container_uri" in msg
    eng = engine(f"  container_type: {kind}\n  container_uri: img:1\n")
    assert isinstance(eng, GlobusComputeEngineConfig) and eng.container_type == kind


def test_custom_containers_need_a_command_with_the_launch_placeholder() -> None:
    msg = error("engine:\n  container_type: custom\n")
    assert "engine.container_type (line 2): custom needs container_cmd_options" in msg
    msg = error("engine:\n  container_type: custom\n  container_cmd_options: docker run img\n")
    assert "engine.container_cmd_options (line 3): must contain {EXECUTOR_LAUNCH_CMD}" in msg
    eng = engine("  container_type: custom\n  container_cmd_options: x {EXECUTOR_LAUNCH_CMD}\n")
    assert isinstance(eng, GlobusComputeEngineConfig) and eng.container_type == "custom"


def test_container_settings_without_a_type_are_refused() -> None:
    msg = error("engine:\n  container_uri: img\n  container_cmd_options: -v /a:/a\n")
    assert "engine.container_uri (line 2): has no effect without container_type" in msg
    assert "engine.container_cmd_options (line 3): has no effect without container_type" in msg


def test_container_type_none_string_means_no_container() -> None:
    eng = engine("  container_type: None\n")
    assert isinstance(eng, GlobusComputeEngineConfig) and eng.container_type is None


def test_unknown_container_type_lists_the_choices() -> None:
    msg = error("engine:\n  container_type: shifter\n")
    assert "engine.container_type (line 2): Input should be 'docker', 'podman'" in msg


@pytest.mark.parametrize(
    "provider",
    [
        "{type: AWSProvider, image_id: ami-1, key_name: k}",
        "{type: GoogleCloudProvider, key_file: k, project_id: p, region: r, os_project: o,"
        " os_family: f}",
        "{type: KubernetesProvider, image: 'python:3.12'}",
    ],
)
def test_providers_that_run_containers_refuse_container_uri(provider: str) -> None:
    msg = error(
        f"engine:\n  container_type: docker\n  container_uri: img\n  provider: {provider}\n"
    )
    name = provider.split(",")[0].removeprefix("{type: ")
    assert f"engine.container_uri (line 3): not compatible with {name}, which starts" in msg


# ---- providers, launchers, addresses -----------------------------------------------------


def test_provider_and_launcher_errors_carry_their_lines() -> None:
    msg = error(
        "engine:\n"
        "  type: GlobusComputeEngine\n"
        "  provider:\n"
        "    type: SlurmProvider\n"
        "    partiton: debug\n"
        "    launcher:\n"
        "      type: SrunLauncher\n"
        "      bogus: 1\n"
    )
    assert "engine.provider.partiton (line 5): unknown option of SlurmProvider" in msg
    assert "did you mean 'partition'?" in msg
    assert "engine.provider.launcher.bogus (line 8): unknown option of SrunLauncher" in msg


def test_unknown_provider_and_launcher_types_list_the_valid_ones() -> None:
    msg = error("engine:\n  provider:\n    type: SlurmProvder\n")
    assert "engine.provider.type (line 3): 'SlurmProvder' is not a valid provider type" in msg
    assert "valid types: AWSProvider" in msg and "SlurmProvider" in msg
    msg = error("engine:\n  provider:\n    type: LocalProvider\n    launcher: {type: Nope}\n")
    assert "engine.provider.launcher.type (line 4): 'Nope' is not a valid launcher type" in msg
    assert "SrunLauncher" in msg


def test_provider_needs_a_type_and_its_required_options() -> None:
    assert "engine.provider.type (line 2): missing the provider 'type'" in error(
        "engine:\n  provider: {init_blocks: 1}\n"
    )
    assert "engine.provider.image (line 2): required by KubernetesProvider" in error(
        "engine:\n  provider: {type: KubernetesProvider}\n"
    )
    assert "engine.provider (line 2): must be a mapping" in error("engine:\n  provider: local\n")


def test_provider_null_options_are_dropped() -> None:
    eng = engine("  provider:\n    type: SlurmProvider\n    account: null\n    launcher: null\n")
    assert isinstance(eng, GlobusComputeEngineConfig)
    assert eng.provider == {"type": "SlurmProvider"}


def test_walltime_read_as_a_number_by_yaml_is_an_error() -> None:
    msg = error("engine:\n  provider:\n    type: SlurmProvider\n    walltime: 1:00:00\n")
    assert "engine.provider.walltime (line 4): must be a string like '01:30:00'" in msg
    assert "got the number 3600" in msg


def test_address_is_a_string_or_an_address_function() -> None:
    assert engine("  address: 10.0.0.1\n").engine_spec()["address"] == "10.0.0.1"
    spec = engine("  address: {type: address_by_route}\n").engine_spec()
    assert spec["address"] == {"type": "address_by_route"}
    msg = error("engine:\n  address:\n    type: address_by_magic\n")
    assert "engine.address.type (line 3): 'address_by_magic' is not a valid address type" in msg
    assert "address_by_interface" in msg
    msg = error("engine:\n  address:\n    type: address_by_interface\n    iface: ib0\n")
    assert "engine.address.iface (line 4): unknown option of address_by_interface" in msg
    assert "engine.address.ifname (line 2): required by address_by_interface" in msg


# ---- errors in general -------------------------------------------------------------------


def test_every_problem_is_reported_at_once_in_file_order() -> None:
    msg = error(
        "amqp_port: 1\nengine:\n  type: ThreadPoolEngine\n  max_workers: many\nlog_dir: x\n"
    )
    lines = msg.splitlines()
    assert lines[0] == "config.yaml: invalid configuration:"
    assert lines[1].startswith("  amqp_port (line 1)")
    assert lines[2].startswith("  engine.max_workers (line 4)")
    assert lines[3].startswith("  log_dir (line 5)")


def test_the_source_name_leads_every_message() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/ep/config.yaml: invalid configuration"):
        load_config_text("bogus: 1\n", "/etc/ep/config.yaml")


def test_malformed_yaml_names_the_line() -> None:
    msg = error("engine:\n\ttype: ThreadPoolEngine\n")
    assert "not valid YAML at line 2, column 1" in msg and "use spaces" in msg
    msg = error("engine:\n  type: ThreadPoolEngine\n   max_workers: 2\n")
    assert "not valid YAML at line 3" in msg
    assert "not valid YAML" in error("engine: [unclosed\n")


def test_duplicate_keys_are_errors_not_silently_last_wins() -> None:
    msg = error("engine:\n  type: ThreadPoolEngine\n  type: ProcessPoolEngine\n")
    assert "engine.type (line 3): duplicate key, first at line 2" in msg


def test_the_top_level_must_be_a_mapping() -> None:
    assert "the top level must be a mapping, not list" in error("- a\n- b\n")


# ---- describe ----------------------------------------------------------------------------


def test_describe_fills_in_defaults_and_loads_back_equal() -> None:
    cfg = user(
        "engine:\n  max_workers_per_node: 2\n  strategy: none\n"
        "  provider: {type: LocalProvider, max_blocks: 2}\n"
        f"allowed_functions: [{ADMIN}]\n"
    )
    text = describe(cfg)
    assert text.startswith("# user endpoint configuration")
    assert "heartbeat_period: 30.0" in text and "idle_heartbeats_hard: 5760" in text
    assert "max_workers_per_node: 2" in text and "strategy: none" in text
    assert "htex_options" not in text
    assert load_config_text(text) == cfg


def test_describe_of_a_manager_loads_back_equal(tmp_path: Path) -> None:
    (tmp_path / "idmap.json").write_text("[]")
    cfg = manager(
        "public: true\nidentity_mapping_config_path: idmap.json\npam: {service_name: x}\n",
        base_dir=tmp_path,
    )
    text = describe(cfg)
    assert text.startswith("# manager endpoint configuration")
    assert f"identity_mapping_config_path: {tmp_path / 'idmap.json'}" in text
    assert load_config_text(text) == cfg


def test_a_thread_pool_config_loads_without_importing_parsl() -> None:
    code = (
        "import sys\n"
        "from endpoint.config import load_config_text\n"
        "cfg = load_config_text('engine:\\n  type: ThreadPoolEngine\\n  max_workers: 2\\n')\n"
        "assert cfg.engine.engine_spec() == {'type': 'ThreadPoolEngine', 'max_workers': 2}\n"
        "assert 'parsl' not in sys.modules, 'parsl was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_heartbeat_threshold_is_kept_and_clamped_to_two_periods() -> None:
    cfg = load_config_text("engine: {type: ThreadPoolEngine}\nheartbeat_threshold: 200\n")
    assert isinstance(cfg, EndpointConfig) and cfg.heartbeat_threshold == 200
    cfg = load_config_text(
        "engine: {type: ThreadPoolEngine}\nheartbeat_period: 30\nheartbeat_threshold: 10\n"
    )
    assert isinstance(cfg, EndpointConfig) and cfg.heartbeat_threshold == 60
