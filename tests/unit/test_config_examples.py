"""The example configurations of the official docs, rewritten in tests/unit/configs/.

Each ``configs/*.yaml`` must pass `check()`, load back equal from its `describe()` output and,
for Parsl engines, name a provider that Parsl itself can construct. Each
``configs/unsupported/*.yaml`` must fail with every message its ``# expect:`` lines give.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from endpoint.config import (
    EndpointConfig,
    ManagerConfig,
    check,
    describe,
    load_config_text,
    load_endpoint_dir,
    parsl_types,
)
from endpoint.config.htex import GlobusComputeEngineConfig, ParslEngineConfig
from endpoint.errors import ConfigError

CONFIGS = Path(__file__).parent / "configs"
GOOD = sorted(CONFIGS.glob("*.yaml"))
BAD = sorted((CONFIGS / "unsupported").glob("*.yaml"))
#: Providers whose constructors need optional cloud SDKs. KubernetesProvider's is the
#: `kubernetes` extra, installed: test_kubernetes_extra.py builds it against a kubeconfig.
NEEDS_SDK = {"AWSProvider", "GoogleCloudProvider", "AzureProvider"}


def expectations(path: Path) -> list[str]:
    return [
        line[len("# expect: ") :]
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


def test_there_is_an_example_for_each_documented_setup() -> None:
    names = {p.stem for p in GOOD}
    for wanted in (
        "local_default",
        "slurm_anvil",
        "slurm_perlmutter",
        "slurm_frontera",
        "slurm_expanse",
        "slurm_bridges2",
        "pbspro_polaris",
        "kubernetes",
        "container_docker",
        "container_apptainer",
        "container_custom",
        "mpi_expanse",
        "manager",
    ):
        assert wanted in names
    assert len(BAD) >= 5


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_example_passes_check(path: Path) -> None:
    cfg, source = check(str(path))
    assert source == path
    assert isinstance(cfg, EndpointConfig | ManagerConfig)
    # Examples that are managers say so by having no engine.
    assert isinstance(cfg, ManagerConfig) == path.stem.startswith("manager")


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_example_describes_to_yaml_that_loads_back_equal(path: Path) -> None:
    cfg, _ = check(str(path))
    assert load_config_text(describe(cfg), base_dir=path.parent) == cfg


def _parsl_examples() -> list[Path]:
    return [
        p
        for p in GOOD
        if "provider:" in p.read_text()
        and not p.stem.startswith("manager")
        and p.stem != "kubernetes"
    ]


@pytest.mark.parametrize("path", _parsl_examples(), ids=lambda p: p.stem)
def test_example_provider_is_constructible_by_parsl(path: Path) -> None:
    cfg, _ = check(str(path))
    engine = getattr(cfg, "engine", None)
    assert isinstance(engine, ParslEngineConfig)
    if engine.provider["type"] in NEEDS_SDK:
        # The cloud SDKs are optional extras of Parsl and not installed here: the build must
        # fail with a config error that names the provider and the missing module.
        with pytest.raises(ConfigError, match=engine.provider["type"]) as err:
            parsl_types.build("provider", engine.provider)
        assert "optional modules" in str(err.value)
        return
    provider = parsl_types.build("provider", engine.provider)
    assert type(provider).__name__ == engine.provider["type"]


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_unsupported_example_fails_with_a_clear_message(path: Path) -> None:
    wanted = expectations(path)
    assert wanted, f"{path.name} has no '# expect:' lines"
    with pytest.raises(ConfigError) as err:
        check(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    for fragment in wanted:
        assert fragment in message


def test_polaris_example_keeps_its_launcher_and_scheduler_options() -> None:
    cfg, _ = check(str(CONFIGS / "pbspro_polaris.yaml"))
    spec = cfg.engine.engine_spec()  # type: ignore[union-attr]
    assert spec["provider"]["launcher"] == {
        "type": "MpiExecLauncher",
        "bind_cmd": "--cpu-bind",
        "overrides": "--depth=64 --ppn 1",
    }
    assert spec["provider"]["scheduler_options"] == "#PBS -l filesystems=home:grand:eagle"
    assert spec["available_accelerators"] == 4


def test_kubernetes_example_turns_encryption_off() -> None:
    cfg, _ = check(str(CONFIGS / "kubernetes.yaml"))
    assert isinstance(cfg, EndpointConfig)
    assert isinstance(cfg.engine, GlobusComputeEngineConfig)
    assert cfg.engine.encrypted is False
    assert cfg.engine.engine_spec()["encrypted"] is False
    assert cfg.heartbeat_period == 15


def test_faster_example_strategy_mapping_is_read_as_job_status_kwargs() -> None:
    cfg, _ = check(str(CONFIGS / "slurm_faster.yaml"))
    spec = cfg.engine.engine_spec()  # type: ignore[union-attr]
    assert spec["job_status_kwargs"] == {"strategy": "simple", "max_idletime": 90.0}


def test_container_examples() -> None:
    custom, _ = check(str(CONFIGS / "container_custom.yaml"))
    spec = custom.engine.engine_spec()  # type: ignore[union-attr]
    assert spec["container_type"] == "custom"
    assert spec["container_cmd_options"].endswith("{EXECUTOR_LAUNCH_CMD}")
    apptainer, _ = check(str(CONFIGS / "container_apptainer.yaml"))
    # $USER is for the shell that runs the container command, not for us to expand.
    assert apptainer.engine.engine_spec()["container_cmd_options"] == "-H /home/$USER"  # type: ignore[union-attr]


def test_manager_example_resolves_its_files_next_to_it() -> None:
    cfg, _ = check(str(CONFIGS / "manager.yaml"))
    assert isinstance(cfg, ManagerConfig)
    files = CONFIGS / "manager_files"
    assert cfg.identity_mapping_config_path == files / "identity_mapping.json"
    assert cfg.user_config_template_path == files / "user_config_template.yaml.j2"
    assert cfg.user_config_schema_path == files / "user_config_schema.json"
    assert cfg.pam.enable is True and cfg.max_user_endpoints == 64
    assert cfg.public is True and cfg.email == "admin@example.org"


def test_the_manager_template_renders_to_a_valid_user_config() -> None:
    import jinja2

    template = (CONFIGS / "manager_files" / "user_config_template.yaml.j2").read_text()
    rendered = jinja2.Template(template, undefined=jinja2.StrictUndefined).render(
        PARTITION='"debug"', ACCOUNT_ID='"abc-123"'
    )
    cfg = load_config_text(rendered)
    assert isinstance(cfg, EndpointConfig)
    assert cfg.engine.engine_spec()["provider"]["account"] == "abc-123"
    assert cfg.idle_heartbeats_soft == 2


# ---- check() targets ---------------------------------------------------------------------


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "gc"))
    (tmp_path / "gc").mkdir()
    return tmp_path / "gc"


def test_check_accepts_a_name_under_the_user_dir(user_dir: Path) -> None:
    (user_dir / "ep1").mkdir()
    (user_dir / "ep1" / "config.yaml").write_text("engine: {type: ThreadPoolEngine}\n")
    cfg, source = check("ep1")
    assert isinstance(cfg, EndpointConfig) and source == user_dir / "ep1" / "config.yaml"


def test_check_accepts_an_endpoint_directory_and_a_file(user_dir: Path, tmp_path: Path) -> None:
    ep = tmp_path / "elsewhere"
    ep.mkdir()
    (ep / "config.yaml").write_text("display_name: m\n")
    assert isinstance(check(str(ep))[0], ManagerConfig)
    assert check(str(ep / "config.yaml"))[1] == ep / "config.yaml"


def test_check_of_nothing_names_where_it_looked(user_dir: Path) -> None:
    with pytest.raises(ConfigError, match=f"no-such-ep: no such config file.*{user_dir}"):
        check("no-such-ep")
    (user_dir / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no config\.yaml"):
        check("empty")


def test_check_errors_name_the_file(user_dir: Path) -> None:
    (user_dir / "bad").mkdir()
    (user_dir / "bad" / "config.yaml").write_text("engine:\n  type: Nope\n")
    with pytest.raises(ConfigError) as err:
        check("bad")
    assert str(err.value).startswith(f"{user_dir / 'bad' / 'config.yaml'}: invalid")
    assert "engine.type (line 2)" in str(err.value)


def test_load_endpoint_dir_returns_text_and_source(tmp_path: Path) -> None:
    text = "engine: {type: ThreadPoolEngine}\n"
    (tmp_path / "config.yaml").write_text(text)
    cfg, raw, source = load_endpoint_dir(tmp_path)
    assert isinstance(cfg, EndpointConfig) and raw == text and source == tmp_path / "config.yaml"


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").mkdir()  # a directory where the file should be
    with pytest.raises(ConfigError, match=r"no config\.yaml"):
        load_endpoint_dir(tmp_path)


#: Examples whose engine this host can build (no cluster NIC, cloud SDK or container needed).
BUILDABLE = [
    "thread_pool",
    "process_pool",
    "amqp_port",
    "serializer_wildcards",
    "paths",
    "local_default",
    "retries",
    "autoscaling",
    "environment_setup",
    "worker_pinning",
    "serializers",
    "engine_without_type",
]


@pytest.mark.parametrize("name", BUILDABLE)
def test_engine_model_is_accepted_by_build_engine(name: str) -> None:
    from endpoint.engines.build import build_engine

    cfg, _ = check(str(CONFIGS / f"{name}.yaml"))
    assert isinstance(cfg, EndpointConfig)
    built = build_engine(cfg.engine)
    assert type(built).__name__ == cfg.engine.type
    built.shutdown(wait=False)
