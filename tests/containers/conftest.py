"""Worker images for the container tests (built once, cached by content hash) and the
runtime settings podman needs on this kind of machine.

docker and podman are required: a missing runtime fails these tests, it never skips them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoint.containers.spec import POOL_LABEL
from tests.containers.images import (
    ImageSet,
    build_images,
    load_into_podman,
    podman_conf,
)
from tests.timeouts import set_suite_timeout

#: The session's first test also builds the worker images (a wheelhouse, then docker builds)
#: whenever the sources changed: minutes on a cold cache, beyond the global 300 s.
SUITE_TIMEOUT_S = 1200


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    set_suite_timeout(items, Path(__file__).parent, SUITE_TIMEOUT_S)


#: Never pulled: the registry is a closed port on loopback, so the pull fails at once and
#: nothing leaves the machine.
MISSING_IMAGE = "127.0.0.1:9/ccep-test/nope:missing"


@pytest.fixture(scope="session")
def images() -> ImageSet:
    try:
        return build_images(("a", "b", "c"), mismatch=True)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"container test images could not be built (docker needed): {e}")


@pytest.fixture(scope="session")
def podman_images(images: ImageSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageSet]:
    try:
        load_into_podman(
            [images.python, images.worker, images.mismatch, *map(images.marked, "abc")]
        )
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"podman cannot run the container tests: {e}")
    # Rootful podman here cannot raise hard limits, and its defaults try to; the file
    # sets limits it may use. Workers' podman commands inherit the variable.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTAINERS_CONF", str(podman_conf(tmp_path_factory.mktemp("podman"))))
        yield images


def labelled_containers(runtime: str) -> list[str]:
    """Containers any engine of ours left behind (there should be none once it stopped)."""
    done = subprocess.run(
        [runtime, "ps", "-a", "-q", "--filter", f"label={POOL_LABEL}"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    return done.stdout.split()
