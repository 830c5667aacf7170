"""The `kubernetes` extra (`pip install '.[kubernetes]'`): the documented KubernetesProvider
config (configs/kubernetes.yaml) loads and its engine is built with a real KubernetesProvider.

There is no cluster here: the kubeconfig names an API server on 127.0.0.1 where nothing
listens, and nothing is started (the provider only reads the kubeconfig when built)."""

from __future__ import annotations

from pathlib import Path

import pytest

from endpoint.config import EndpointConfig, check
from endpoint.engines.build import build_engine

CONFIG = Path(__file__).parent / "configs" / "kubernetes.yaml"

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: none
  cluster: {server: "https://127.0.0.1:9"}
users:
- name: nobody
  user: {token: not-a-token}
contexts:
- name: none
  context: {cluster: none, user: nobody, namespace: compute}
current-context: none
"""


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        pytest.fail("the kubernetes extra is missing: pip install -e '.[dev,kubernetes]'")
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(path))
    # The client reads $KUBECONFIG once, when first imported (Parsl imports it early).
    monkeypatch.setattr(
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(path), raising=True
    )
    return path


def test_the_documented_kubernetes_config_builds_its_provider(kubeconfig: Path) -> None:
    cfg, _ = check(str(CONFIG))
    assert isinstance(cfg, EndpointConfig)
    engine = build_engine(cfg.engine)
    provider = engine.executor.provider  # type: ignore[attr-defined]
    assert type(provider).__name__ == "KubernetesProvider"
    assert provider.namespace == "compute" and provider.image == "python:3.12-bookworm"
    assert provider.max_blocks == 2
