"""The images carry the `kubernetes` extra (issue 15): in the endpoint image as `make images`
builds it, `compute-endpoint check-config` accepts the documented KubernetesProvider config
(tests/unit/configs/kubernetes.yaml), and the endpoint builds its engine with a real
KubernetesProvider from it and starts it.

There is no cluster here: the kubeconfig names an API server on 127.0.0.1 where nothing
listens, and no block is asked for (min_blocks 0; the provider reads the kubeconfig when
built);
check-config runs without any network.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.appliance.conftest import Images, sh
from tests.unit.test_kubernetes_extra import KUBECONFIG

CONFIG = Path(__file__).resolve().parents[1] / "unit" / "configs" / "kubernetes.yaml"

#: Run by the image's Python: the config and kubeconfig come in on stdin (one JSON object).
BUILD = """
import json, os, pathlib, sys, uuid
given = json.load(sys.stdin)
for name in ("kubernetes.yaml", "kubeconfig"):
    with open(os.path.join("/tmp", name), "w") as f:
        f.write(given[name])
os.environ["KUBECONFIG"] = "/tmp/kubeconfig"
import kubernetes
from endpoint.config import check
from endpoint.engines.build import build_engine
cfg, _ = check("/tmp/kubernetes.yaml")
engine = build_engine(cfg.engine)
provider = engine.executor.provider
# Started: Parsl's interchange runs and the strategy may poll the provider (min_blocks 0:
# no pod is asked for).
engine.start(endpoint_id=str(uuid.uuid4()), run_dir=pathlib.Path("/tmp"), on_result=print)
status, failure = engine.status(), engine.failure()
engine.shutdown(wait=True)
print(json.dumps({
    "kubernetes": kubernetes.__version__,
    "provider": type(provider).__name__,
    "namespace": provider.namespace,
    "image": provider.image,
    "status_provider": status.get("provider_type"),
    "failure": None if failure is None else str(failure),
}))
"""


def in_image(image: str, *cmd: str, stdin: str, network: str = "none") -> str:
    return sh("docker", "run", "--rm", "-i", "--network", network, image, *cmd, input=stdin)


def test_check_config_accepts_the_documented_kubernetes_config(images: Images) -> None:
    out = in_image(
        images.endpoint,
        "sh",
        "-c",
        "cat > /tmp/kubernetes.yaml && compute-endpoint check-config /tmp/kubernetes.yaml",
        stdin=CONFIG.read_text(),
    )
    assert "KubernetesProvider" in out


def test_the_image_builds_the_kubernetes_engine(images: Images) -> None:
    given = json.dumps({"kubernetes.yaml": CONFIG.read_text(), "kubeconfig": KUBECONFIG})
    # The host's network: the config's address_by_route needs a route (nothing is reached).
    out = in_image(images.endpoint, "python3", "-c", BUILD, stdin=given, network="host")
    built = json.loads(out.strip().splitlines()[-1])
    assert built["provider"] == "KubernetesProvider" and built["kubernetes"]
    assert built["namespace"] == "compute" and built["image"] == "python:3.12-bookworm"
    assert built["status_provider"] == "KubernetesProvider" and built["failure"] is None
