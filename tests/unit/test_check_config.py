"""`compute-endpoint check-config` validates a file without building anything from it.

A config is written for the host that runs the endpoint: a cluster's network interface
(``address_by_interface: hsn0``), its batch system, a cloud SDK installed there. Checking it on
a laptop must therefore only validate it, through the same models the endpoint loads, and never
build an engine, a Parsl executor, provider or address, or a container.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from endpoint.cli.app import main
from endpoint.cli.exits import EX_CONFIG
from endpoint.engines.base import TaskEngine
from tests.unit.test_config_examples import CONFIGS, GOOD

#: An interface this machine lacks; on Perlmutter it is the Slingshot network.
CLUSTER_ONLY = """\
engine:
  type: GlobusComputeEngine
  address:
    type: address_by_interface
    ifname: hsn0
  provider:
    type: SlurmProvider
    partition: debug
    launcher: {type: SrunLauncher}
"""


@pytest.fixture(autouse=True)
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "u"))
    return tmp_path / "u"


@pytest.fixture
def builds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way of building an engine or a Parsl object fail the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("check-config built something")

    monkeypatch.setattr("endpoint.config.parsl_types.build", refuse)
    monkeypatch.setattr("endpoint.engines.build.build_engine", refuse)
    monkeypatch.setattr("endpoint.engines.build.engine_class", refuse)
    # Every engine, however it is reached, is a TaskEngine.
    monkeypatch.setattr(TaskEngine, "__init__", refuse)


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check-config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_address_on_an_interface_this_host_lacks_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], builds_nothing: None
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER_ONLY)
    code, out, err = check_config(path, capsys)
    assert code == 0, err
    assert f"{path}: valid" in err
    engine = yaml.safe_load(out)["engine"]
    assert engine["address"] == {"type": "address_by_interface", "ifname": "hsn0"}
    assert engine["provider"]["type"] == "SlurmProvider"


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_every_example_passes_check_config(
    path: Path, capsys: pytest.CaptureFixture[str], builds_nothing: None
) -> None:
    # The README's promise: each config in tests/unit/configs/ passes check-config here,
    # although most are written for clusters and clouds this machine is not.
    code, _, err = check_config(path, capsys)
    assert code == 0, err


def test_a_cloud_provider_without_its_sdk_passes(
    capsys: pytest.CaptureFixture[str], builds_nothing: None
) -> None:
    # The kubernetes module is an optional extra of Parsl, installed where the endpoint runs.
    code, out, err = check_config(CONFIGS / "kubernetes.yaml", capsys)
    assert code == 0, err
    assert yaml.safe_load(out)["engine"]["provider"]["type"] == "KubernetesProvider"


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ("  address: {type: address_by_nothing}\n", "engine.address.type (line 3)"),
        ("  address: {type: address_by_interface}\n", "engine.address.ifname (line 3)"),
        ("  address: ' '\n", "engine.address (line 3): must not be empty"),
        ("  max_workers_per_nod: 2\n", "engine.max_workers_per_nod (line 3)"),
        ("  provider: {type: SlurmProvider, partiton: x}\n", "engine.provider.partiton"),
        # What SlurmProvider's own (typeguard) checks refuse, found without building one.
        (
            "  provider: {type: SlurmProvider, nodes_per_block: two}\n",
            "engine.provider.nodes_per_block (line 3): wrong type: str is not an instance of int",
        ),
    ],
)
def test_invalid_options_still_fail_with_the_key_and_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    builds_nothing: None,
    engine: str,
    message: str,
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"engine:\n  type: GlobusComputeEngine\n{engine}")
    code, out, err = check_config(path, capsys)
    assert code == EX_CONFIG
    assert message in err and out == ""
