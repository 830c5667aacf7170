"""Talking to a container runtime about images and leftovers (never about running workers).

Workers are started by argv (`endpoint.containers.argv`) from the engines; a client only
answers "is this image here?", pulls it when it is not, and removes containers that outlived
their engine (a worker whose runtime CLI was SIGKILLed keeps running otherwise).

* docker: the ``docker`` SDK, which gives typed errors (``ImageNotFound``) instead of exit
  codes and stderr to parse.
* podman, podman-hpc: their CLI (``image exists``, ``pull``, ``ps``/``rm`` by label); the SDK
  would need podman's API socket service running.
* apptainer, singularity: an image is a file (``.sif``, a sandbox directory) or a URI that the
  runtime fetches itself; only files can be checked. The ``spython`` package was considered
  and not used: it shells out to the same binary after probing its version, so it adds a
  dependency without making these checks simpler or testable without the binary.
* custom: nothing can be known about the image.

Runtime failures are translated here into `endpoint.errors` classes: callers never see a
``docker.errors`` or ``subprocess`` exception.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any, Protocol

from endpoint.containers.spec import APPTAINER_FAMILY, DOCKER_FAMILY, ContainerSpec
from endpoint.errors import ContainerError, ContainerRuntimeMissing, ImageNotFound

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 30.0
PULL_TIMEOUT_S = 600.0
#: How long a cleanup waits for removed containers to be gone.
REMOVE_WAIT_S = 5.0
#: URI schemes apptainer resolves itself (and caches); there is no file to look at.
_APPTAINER_SCHEMES = ("docker://", "docker-daemon://", "library://", "oras://", "shub://", "http")


class ContainerClient(Protocol):
    def image_present(self, image: str) -> bool: ...

    def image_id(self, image: str) -> str | None:
        """What identifies the image's content here (None: nothing does), for caches."""

    def pull(self, image: str) -> None:
        """Fetch the image or raise `ImageNotFound` saying why not."""

    def remove_labelled(self, key: str, value: str) -> int:
        """Force-remove containers labelled ``key=value`` and wait (briefly) until they are
        gone; how many were found."""


def ensure_image(client: ContainerClient, image: str) -> None:
    """Make sure ``image`` can be run here: present already, or pulled now."""
    if client.image_present(image):
        return
    log.info("image %s is not on this host; pulling it", image)
    client.pull(image)


def client_for(spec: ContainerSpec) -> ContainerClient:
    if spec.runtime == "docker":
        return DockerClient()
    if spec.runtime in DOCKER_FAMILY:
        return PodmanClient(spec.program)
    if spec.runtime in APPTAINER_FAMILY:
        return FileImageClient(spec.program)
    return NullClient()


class DockerClient:
    """The docker daemon through the ``docker`` SDK (``DOCKER_HOST`` is honoured)."""

    def __init__(self) -> None:
        self._sdk: Any = None

    def _client(self) -> Any:
        if self._sdk is None:
            import docker  # only endpoints that use docker pay for the import

            try:
                self._sdk = docker.from_env(timeout=int(CHECK_TIMEOUT_S))
            except docker.errors.DockerException as e:
                raise ContainerRuntimeMissing(f"cannot reach the docker daemon: {e}") from e
        return self._sdk

    def image_present(self, image: str) -> bool:
        import docker

        try:
            self._client().images.get(image)
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.DockerException as e:
            raise ContainerRuntimeMissing(f"docker cannot look up image {image!r}: {e}") from e
        return True

    def image_id(self, image: str) -> str | None:
        import docker

        try:
            found: str = self._client().images.get(image).id
        except docker.errors.DockerException:
            return None
        return found

    def pull(self, image: str) -> None:
        import docker
        from docker.utils import parse_repository_tag

        repository, tag = parse_repository_tag(image)
        try:
            # An explicit tag: without one the SDK pulls every tag of the repository.
            self._client().images.pull(repository, tag=tag or "latest")
        except docker.errors.DockerException as e:
            reason = getattr(e, "explanation", None) or str(e)
            raise ImageNotFound(f"docker image {image!r} is not on this host: {reason}") from e

    def remove_labelled(self, key: str, value: str) -> int:
        import docker

        found = self._labelled(key, value)
        for container in found:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass  # removed by --rm meanwhile: what we wanted
            except docker.errors.APIError as e:
                if e.status_code != 409:  # 409: removal already in progress
                    log.warning("cannot remove container %s: %s", container.short_id, e)
        # --rm and our removals finish in the daemon after the calls return.
        _wait_until(lambda: not self._labelled(key, value))
        return len(found)

    def _labelled(self, key: str, value: str) -> list[Any]:
        import docker

        try:
            found: list[Any] = self._client().containers.list(
                all=True, filters={"label": f"{key}={value}"}, ignore_removed=True
            )
        except docker.errors.DockerException as e:
            log.warning("cannot list containers labelled %s=%s: %s", key, value, e)
            return []
        return found


class PodmanClient:
    """podman or podman-hpc through its command line."""

    def __init__(self, program: str = "podman") -> None:
        self.program = program

    def _run(
        self, *args: str, timeout: float = CHECK_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.program, *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as e:
            raise ContainerRuntimeMissing(f"{self.program} is not installed on this host") from e
        except subprocess.TimeoutExpired as e:
            raise ContainerError(f"{self.program} {args[0]} took over {timeout:g} s") from e

    def image_present(self, image: str) -> bool:
        done = self._run("image", "exists", image)
        if done.returncode in (0, 1):
            return done.returncode == 0
        raise ContainerRuntimeMissing(
            f"{self.program} cannot look up image {image!r}: {_tail(done.stderr)}"
        )

    def image_id(self, image: str) -> str | None:
        done = self._run("image", "inspect", "--format", "{{.Id}}", image)
        found = done.stdout.strip()
        return found if done.returncode == 0 and found else None

    def pull(self, image: str) -> None:
        try:
            done = self._run("pull", "-q", image, timeout=PULL_TIMEOUT_S)
        except ContainerRuntimeMissing:
            raise
        except ContainerError as e:
            raise ImageNotFound(f"{self.program} image {image!r}: {e}") from e
        if done.returncode != 0:
            raise ImageNotFound(
                f"{self.program} image {image!r} is not on this host: {_tail(done.stderr)}"
            )

    def remove_labelled(self, key: str, value: str) -> int:
        try:
            ids = self._labelled(key, value)
            if ids:
                self._run("rm", "-f", *ids)
            _wait_until(lambda: not self._labelled(key, value))
        except ContainerError as e:
            log.warning("cannot remove containers labelled %s=%s: %s", key, value, e)
            return 0
        return len(ids)

    def _labelled(self, key: str, value: str) -> list[str]:
        return self._run("ps", "-a", "-q", "--filter", f"label={key}={value}").stdout.split()


class FileImageClient:
    """apptainer or singularity: images are files, or URIs the runtime resolves itself."""

    def __init__(self, program: str) -> None:
        self.program = program

    def image_present(self, image: str) -> bool:
        return image.startswith(_APPTAINER_SCHEMES) or os.path.exists(image)

    def image_id(self, image: str) -> str | None:
        try:
            st = os.stat(image)
        except OSError:
            return None  # a URI: the runtime's cache decides what it resolves to
        return f"{os.path.realpath(image)}:{st.st_size}:{st.st_mtime_ns}"

    def pull(self, image: str) -> None:
        raise ImageNotFound(
            f"{self.program} image {image!r} does not exist; give the path of a .sif file or"
            " sandbox directory, or a URI such as docker://repository:tag"
        )

    def remove_labelled(self, key: str, value: str) -> int:
        return 0  # plain processes, ended with the engine's process group


class NullClient:
    """custom commands: the template owns the image, if there is one."""

    def image_present(self, image: str) -> bool:
        return True

    def image_id(self, image: str) -> str | None:
        return None

    def pull(self, image: str) -> None:
        return None

    def remove_labelled(self, key: str, value: str) -> int:
        return 0


def _wait_until(done: Callable[[], bool], timeout: float = REMOVE_WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _tail(text: str, limit: int = 500) -> str:
    """The runtime's final word: its last line (earlier ones are retries and warnings)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][-limit:] if lines else "(no output)"
