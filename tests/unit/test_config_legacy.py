"""Legacy config.py files: read through stand-ins, validated exactly like config.yaml."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from endpoint.config import (
    EndpointConfig,
    ManagerConfig,
    check,
    describe,
    load_config,
    load_config_text,
    load_endpoint_dir,
)
from endpoint.config.htex import GlobusComputeEngineConfig
from endpoint.errors import ConfigError

LEGACY = Path(__file__).parent / "configs" / "legacy"
FILES = sorted(LEGACY.glob("*.py"))


def expectations(path: Path) -> list[str]:
    prefix = "# expect: "
    lines = path.read_text().splitlines()
    return [line[len(prefix) :] for line in lines if line.startswith(prefix)]


GOOD = [p for p in FILES if not expectations(p)]
BAD = [p for p in FILES if expectations(p)]


def write(tmp_path: Path, text: str, name: str = "config.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(path: Path) -> EndpointConfig | ManagerConfig:
    return load_config(path)[0]


def failure(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value)


# Every legacy load warns its user (one test checks that it does); the rest need not hear it.
pytestmark = pytest.mark.filterwarnings("ignore:.*config.py is deprecated:DeprecationWarning")


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_legacy_example_loads(path: Path) -> None:
    cfg, text = load_config(path)
    assert text == path.read_text()
    assert isinstance(cfg, ManagerConfig) == ("manager" in path.stem)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_legacy_example_without_modern_equivalent_fails_clearly(path: Path) -> None:
    message = failure(path)
    assert message.startswith(str(path))
    for fragment in expectations(path):
        assert fragment in message


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_legacy_example_translates_to_equal_yaml(path: Path) -> None:
    cfg = load(path)
    assert load_config_text(describe(cfg), base_dir=path.parent) == cfg


def test_the_official_packages_are_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Importable booby-trapped packages of the same names: touching them fails the load.
    for name in ("globus_compute_endpoint", "funcx_endpoint"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for path in GOOD:
        load(path)
    assert "globus_compute_endpoint" not in sys.modules
    assert "funcx_endpoint" not in sys.modules


def test_executors_list_becomes_a_globus_compute_engine() -> None:
    cfg = load(LEGACY / "gc2_slurm.py")
    assert isinstance(cfg, EndpointConfig)
    assert cfg.heartbeat_period == 60 and cfg.idle_heartbeats_soft == 10
    spec = cfg.engine.engine_spec()
    assert spec["type"] == "GlobusComputeEngine"
    assert spec["address"] == {"type": "address_by_interface", "ifname": "ib0"}
    assert spec["provider"]["launcher"] == {"type": "SrunLauncher"}
    assert spec["provider"]["partition"] == "debug"


def test_legacy_and_yaml_spellings_give_the_same_config() -> None:
    yaml_text = """
engine:
  type: GlobusComputeEngine
  max_workers_per_node: 4
  available_accelerators: 4
  address: {type: address_by_hostname}
  job_status_kwargs: {max_idletime: 300}
  provider:
    type: PBSProProvider
    account: MyProject
    queue: debug
    cpus_per_node: 32
    select_options: ngpus=4
    launcher: {type: MpiExecLauncher, bind_cmd: --cpu-bind, overrides: --depth=64 --ppn 1}
    walltime: "01:00:00"
amqp_port: 443
"""
    assert load(LEGACY / "gc3_engine.py") == load_config_text(yaml_text)


def test_funcx_strategy_object_and_local_channel_are_translated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = load(LEGACY / "funcx1_strategy.py")
    assert isinstance(cfg, EndpointConfig)
    assert isinstance(cfg.engine, GlobusComputeEngineConfig)
    assert cfg.engine.job_status_kwargs.max_idletime == 60
    assert cfg.engine.provider == {"type": "LocalProvider", "init_blocks": 1, "max_blocks": 2}
    assert "LocalChannel" in caplog.text


def test_manager_config_with_pam() -> None:
    cfg = load(LEGACY / "gc4_manager.py")
    assert isinstance(cfg, ManagerConfig)
    assert cfg.public is True and cfg.pam.enable is True and cfg.pam.service_name == "compute"
    assert cfg.mu_child_ep_grace_period_s == 10


def test_loading_warns_logging_and_deprecation(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), pytest.warns(DeprecationWarning, match="config.yaml"):
        load(LEGACY / "gc4_thread_pool.py")
    assert "config.py is deprecated; move its settings to config.yaml" in caplog.text


def test_config_py_wins_over_config_yaml(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "engine: {type: ProcessPoolEngine}\n", "config.yaml")
    py = write(
        tmp_path,
        "from globus_compute_endpoint.endpoint.config import Config\n"
        "from globus_compute_endpoint.engines import ThreadPoolEngine\n"
        "config = Config(engine=ThreadPoolEngine(max_workers=3))\n",
    )
    with caplog.at_level(logging.WARNING):
        cfg, text, source = load_endpoint_dir(tmp_path)
    assert source == py and text == py.read_text()
    assert isinstance(cfg, EndpointConfig)
    assert cfg.engine.engine_spec() == {"type": "ThreadPoolEngine", "max_workers": 3}
    assert "config.yaml is ignored" in caplog.text
    assert check(str(tmp_path))[1] == py


def test_errors_point_at_the_keyword_line_even_through_variables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "from parsl.providers import SlurmProvider\n"
        "from parsl.launchers import SrunLauncher\n"
        "from globus_compute_endpoint.endpoint.config import Config\n"
        "from globus_compute_endpoint.engines import GlobusComputeEngine\n"
        "\n"
        "launcher = SrunLauncher(\n"
        "    overides='-c 4',\n"
        ")\n"
        "provider = SlurmProvider(partition='debug', launcher=launcher)\n"
        "config = Config(\n"
        "    engine=GlobusComputeEngine(\n"
        "        provider=provider,\n"
        "        heartbeat_threshold='soon',\n"
        "    ),\n"
        "    log_dir='.',\n"
        ")\n",
    )
    message = failure(path)
    assert "engine.provider.launcher.overides (line 7): unknown option of SrunLauncher" in message
    assert "did you mean 'overrides'?" in message
    assert "engine.heartbeat_threshold (line 13): Input should be a valid integer" in message
    assert "log_dir (line 15): accepted but never read" in message


def test_python_errors_name_their_line(tmp_path: Path) -> None:
    assert "(line 2): invalid Python" in failure(write(tmp_path, "x = 1\ny = (\n"))
    message = failure(write(tmp_path, "import os\nconfig = os.environ['NOPE_NOT_SET_X']\n"))
    assert "(line 2): KeyError" in message


def test_config_must_be_a_config_object(tmp_path: Path) -> None:
    assert "defines no `config`" in failure(write(tmp_path, "x = 1\n"))
    message = failure(write(tmp_path, "config = {'engine': {}}\n"))
    assert "`config` must be Config(...)" in message


def test_compute_classes_take_keywords_only(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "from globus_compute_endpoint.engines import ThreadPoolEngine\n"
        "from globus_compute_endpoint.endpoint.config import Config\n"
        "config = Config(engine=ThreadPoolEngine(4))\n",
    )
    assert "(line 3): ThreadPoolEngine() takes keyword arguments only" in failure(path)


def test_engine_and_executors_together_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "from globus_compute_endpoint.endpoint.utils.config import Config\n"
        "from globus_compute_endpoint.engines import ThreadPoolEngine\n"
        "from globus_compute_endpoint.executors import HighThroughputExecutor\n"
        "config = Config(engine=ThreadPoolEngine(), executors=[HighThroughputExecutor()])\n",
    )
    assert "give either executors= or engine=, not both" in failure(path)


def test_prebuilt_executor_options_become_engine_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "from parsl.executors import HighThroughputExecutor\n"
        "from parsl.providers import LocalProvider\n"
        "from globus_compute_endpoint.endpoint.config import Config\n"
        "from globus_compute_endpoint.engines import GlobusComputeEngine\n"
        "htex = HighThroughputExecutor(max_workers_per_node=2, provider=LocalProvider())\n"
        "config = Config(engine=GlobusComputeEngine(executor=htex, encrypted=False))\n",
    )
    cfg = load(path)
    assert isinstance(cfg, EndpointConfig)
    assert cfg.engine.engine_spec() == {
        "type": "GlobusComputeEngine",
        "encrypted": False,
        "provider": {"type": "LocalProvider"},
        "max_workers_per_node": 2,
    }
    clash = write(
        tmp_path,
        "from parsl.executors import HighThroughputExecutor\n"
        "from globus_compute_endpoint.endpoint.config import Config\n"
        "from globus_compute_endpoint.engines import GlobusComputeEngine\n"
        "htex = HighThroughputExecutor(label='a')\n"
        "config = Config(engine=GlobusComputeEngine(executor=htex, label='b'))\n",
    )
    assert "label set on both the engine and its executor" in failure(clash)


def test_plain_parsl_imports_still_work(tmp_path: Path) -> None:
    # `import parsl.providers` and other parsl attributes behave like the real package.
    path = write(
        tmp_path,
        "import parsl\n"
        "import parsl.providers\n"
        "import parsl.launchers as launchers\n"
        "from globus_compute_endpoint.endpoint.config import Config\n"
        "from globus_compute_endpoint.engines import GlobusComputeEngine\n"
        "assert parsl.__version__\n"
        "config = Config(engine=GlobusComputeEngine(provider=parsl.providers.LocalProvider(\n"
        "    launcher=launchers.SingleNodeLauncher())))\n",
    )
    cfg = load(path)
    assert isinstance(cfg, EndpointConfig)
    assert cfg.engine.engine_spec()["provider"]["launcher"] == {"type": "SingleNodeLauncher"}


def test_removed_parsl_names_fail_with_the_valid_ones(tmp_path: Path) -> None:
    cobalt = write(
        tmp_path,
        "from parsl.providers import CobaltProvider\n"
        "from globus_compute_endpoint.endpoint.config import Config\n"
        "from globus_compute_endpoint.engines import GlobusComputeEngine\n"
        "config = Config(engine=GlobusComputeEngine(provider=CobaltProvider(queue='q')))\n",
    )
    message = failure(cobalt)
    assert "engine.provider.type (line 4): 'CobaltProvider' is not a valid provider type" in message
    assert "valid types: AWSProvider" in message
    launcher = write(tmp_path, "from parsl.launchers import AprunLauncherX\n")
    assert "cannot import name 'AprunLauncherX'" in failure(launcher)
    assert "valid: AprunLauncher" in failure(launcher)


def test_parsl_thread_pool_executor_points_at_the_engines(tmp_path: Path) -> None:
    path = write(tmp_path, "from parsl.executors import ThreadPoolExecutor\n")
    assert "cannot import name 'ThreadPoolExecutor'" in failure(path)


def test_legacy_manager_files_resolve_next_to_config_py(tmp_path: Path) -> None:
    (tmp_path / "idmap.json").write_text("[]")
    path = write(
        tmp_path,
        "from globus_compute_endpoint.endpoint.config import ManagerEndpointConfig\n"
        "config = ManagerEndpointConfig(identity_mapping_config_path='idmap.json')\n",
    )
    cfg = load(path)
    assert isinstance(cfg, ManagerConfig)
    assert cfg.identity_mapping_config_path == tmp_path / "idmap.json"


def test_a_bare_config_without_engine_means_the_2x_default_engine(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "from globus_compute_endpoint.endpoint.utils.config import Config\n"
        "config = Config(display_name='defaults')\n",
    )
    cfg = load(path)
    assert isinstance(cfg, EndpointConfig)
    assert isinstance(cfg.engine, GlobusComputeEngineConfig)
