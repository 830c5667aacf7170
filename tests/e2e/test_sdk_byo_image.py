"""The official SDK 4.19 → our endpoint, whose GlobusComputeEngine workers (or
ProcessPoolEngine workers, one per container) run in an image built from the official docs'
recipe (``pip install globus-compute-endpoint==4.19.0``), with nothing of this project in it
(issue 15, "bring your own worker image").

podman, not docker: these tests run in their own network namespace (``unshare -n``), and
podman's ``--network host`` is the namespace podman itself runs in, where the endpoint's
interchange listens; docker's containers would join the daemon's.
"""

from __future__ import annotations

import subprocess

import pytest

from devstack.stack import Stack, local_gce_engine
from tests.containers.byo_images import build_byo_images, copy_to_podman
from tests.containers.images import podman_conf
from tests.e2e.conftest import SdkRunner

ENGINES = {
    "gce": local_gce_engine(),
    "process": """\
  type: ProcessPoolEngine
  max_workers: 2
""",
}
CONFIG = """\
display_name: byo-image
heartbeat_period: 5
engine:
  container_type: podman
  container_uri: {image}
{engine}"""


@pytest.fixture(scope="module", params=sorted(ENGINES))
def byo_endpoint(stack: Stack, request: pytest.FixtureRequest) -> str:
    try:
        image = build_byo_images().official
        copy_to_podman([image])
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"the official-recipe image could not be built or loaded into podman: {e}")
    name = f"byo-{request.param}"
    stack.configure_endpoint(name, CONFIG.format(image=image, engine=ENGINES[request.param]))
    # Rootful podman here cannot raise hard limits, which its defaults try to.
    conf = podman_conf(stack.root)
    return stack.start_endpoint(name, timeout=120, extra_env={"CONTAINERS_CONF": str(conf)})


def test_the_official_sdk_runs_functions_in_an_official_recipe_image(
    byo_endpoint: str, run_sdk: SdkRunner
) -> None:
    out = run_sdk(
        f"""
import json
from globus_compute_sdk import Executor
from globus_compute_sdk.errors import TaskExecutionFailed

def where(x):
    import os, sys
    import globus_compute_sdk  # the image's own copy, as its functions expect
    with open("/etc/ccep-image") as f:
        image = f.read().strip()
    return {{"image": image, "python": sys.executable, "x": x * 2,
             "sdk": globus_compute_sdk.__version__,
             "container": os.path.exists("/run/.containerenv")}}

def boom():
    raise ValueError("kaboom in the image")

with Executor(endpoint_id={byo_endpoint!r}) as ex:
    seen = [f.result(timeout=180) for f in [ex.submit(where, i) for i in range(4)]]
    try:
        ex.submit(boom).result(timeout=60)
        raised = None
    except TaskExecutionFailed as e:
        raised = str(e)
print(json.dumps({{"seen": seen, "raised": raised}}))
""",
        timeout=400,
    )
    assert [s["x"] for s in out["seen"]] == [0, 2, 4, 6]
    for s in out["seen"]:
        assert s["image"] == "byo-official" and s["container"]
        assert s["python"].startswith("/opt/venv/") and s["sdk"] == "4.19.0"
    assert out["raised"] is not None and "ValueError: kaboom in the image" in out["raised"]
