"""The images as built by `make images`: tags, labels, user, contents, and the endpoint role's
failure modes (a container that cannot do its job must exit non-zero, not linger).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.appliance.conftest import PREFIX, Images, docker, run_container

OCI = "org.opencontainers.image"


def labels(ref: str) -> dict[str, str]:
    return dict(json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", ref)))


def run_rm(image: str, *cmd: str, entrypoint: str | None = None) -> str:
    opts = ["--entrypoint", entrypoint] if entrypoint else []
    return docker("run", "--rm", "--network", "host", *opts, image, *cmd)


def test_every_image_is_tagged_with_the_version_and_latest(images: Images) -> None:
    assert images.version and images.build_s > 0
    for ref in (images.endpoint, images.worker, images.all_in_one):
        name = ref.rsplit(":", 1)[0]
        ids = {docker("image", "inspect", "--format", "{{.Id}}", f"{name}:{tag}") for tag in
               (images.version, "latest")}  # fmt: skip
        assert len(ids) == 1, f"{name}:latest is not {name}:{images.version}"


@pytest.mark.parametrize("attr", ["endpoint", "worker", "all_in_one"])
def test_oci_labels_carry_the_package_version_source_and_revision(
    images: Images, attr: str
) -> None:
    ref = getattr(images, attr)
    found = labels(ref)
    assert found[f"{OCI}.title"] == ref.split(":")[0]
    assert found[f"{OCI}.base.name"] == "debian:bookworm-slim"
    assert found[f"{OCI}.source"] and found[f"{OCI}.revision"]
    # The label is the package's own idea of its version, not a separate number.
    # `version` prints the official format first, then this package and its version.
    reported = run_rm(images.worker, "compute-endpoint", "version").splitlines()[-1].split()[-1]
    assert found[f"{OCI}.version"] == reported == images.version


def test_final_images_run_as_non_root_without_compilers(images: Images) -> None:
    for ref in (images.endpoint, images.all_in_one, images.worker):
        probe = run_rm(
            ref, "-c", "id -u; id -g; command -v gcc cc g++ make || true", entrypoint="sh"
        )
        uid, gid, *tools = probe.split()
        assert (uid, gid, tools) == ("10001", "0", []), f"{ref}: {probe}"


def test_the_worker_image_has_parsl_and_our_worker_on_path(images: Images) -> None:
    out = run_rm(
        images.worker,
        "sh",
        "-c",
        "command -v process_worker_pool.py && python -m endpoint.worker --help | head -1"
        " && python -c 'import parsl, dill; print(parsl.__version__, dill.__version__)'",
    )
    assert "/opt/compute-endpoint/bin/process_worker_pool.py" in out and "0.3.9" in out


def test_a_bad_config_ends_the_container_at_once_with_exit_78(images: Images) -> None:
    box = run_container(
        images.endpoint,
        name=f"{PREFIX}-badconfig",
        env={"ENDPOINT_CONFIG": "engine: {type: ThreadPoolEngine}\nno_such_key: 1\n"},
    )
    code = int(docker("wait", box.name, timeout=60).strip())
    assert code == 78 and "no_such_key" in box.logs(), box.logs()


def test_an_endpoint_that_keeps_failing_ends_the_container_with_exit_1(images: Images) -> None:
    """supervisord marks it FATAL after its start retries; the watchdog stops the container."""
    started = time.monotonic()
    box = run_container(
        images.endpoint,
        name=f"{PREFIX}-fatal",
        env={
            "COMPUTE_SERVICE_URL": "http://localhost:9",  # nothing listens on the discard port
            "ENDPOINT_WAIT_SECS": "1",
            "GLOBUS_COMPUTE_CLIENT_ID": "6a1e4b0e-7f0e-4c55-9a57-7f1b9c5a1a11",
            "GLOBUS_COMPUTE_CLIENT_SECRET": "unused",
        },
    )
    code = int(docker("wait", box.name, timeout=120).strip())
    logs = box.logs()
    took = time.monotonic() - started
    print(f"\n[appliance] FATAL endpoint: container exit {code} after {took:.0f}s")
    assert code == 1 and "entered FATAL state" in logs and "watchdog: program endpoint" in logs
