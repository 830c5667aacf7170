"""What a container launch needs, as typed data: the runtime, the image and the options.

`ContainerSpec` is built once from the engine's ``container_type``, ``container_uri`` and
``container_cmd_options`` and never re-parsed: the options string is split with `shlex` into
argv elements here, so ``-e 'A=b c'`` stays one ``A=b c`` element all the way into the
container, and nothing is ever joined back into a string and split again (the official
endpoint's ``" ".join(shlex.split(...))`` is what loses those quotes).

`LaunchContext` carries what is known only when the engine starts: the directory mounted at
the same path inside the container, labels used to find leftover containers, and whether the
worker talks over the container's stdin/stdout (process pools) or over the network (Parsl).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Literal, cast, get_args

from endpoint.errors import ConfigError

Runtime = Literal["docker", "podman", "podman-hpc", "apptainer", "singularity", "custom"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
#: Runtimes with docker's command line (``run --rm -v ...``).
DOCKER_FAMILY = ("docker", "podman", "podman-hpc")
#: Runtimes with apptainer's command line (``exec --bind ...``); no daemon, no PID namespace.
APPTAINER_FAMILY = ("apptainer", "singularity")
#: The only two placeholders a custom template may use; every other brace stays literal.
RUNDIR_PLACEHOLDER = "{EXECUTOR_RUNDIR}"
LAUNCH_CMD_PLACEHOLDER = "{EXECUTOR_LAUNCH_CMD}"
#: Label put on every container an engine starts, so leftovers can be found and removed.
POOL_LABEL = "org.container-compute-endpoint.pool"
#: Worker environment variables that a container would not otherwise see (docker and podman
#: start from the image's environment); apptainer passes the host environment through anyway.
FORWARDED_ENV = ("GC_TASK_TIMEOUT",)
MAX_IMAGE_LENGTH = 512


@dataclass(frozen=True)
class ContainerSpec:
    """One way of running a command in a container, independent of the command."""

    runtime: Runtime
    image: str | None = None
    #: ``container_cmd_options`` as argv elements (for ``custom``: the whole template).
    options: tuple[str, ...] = ()
    #: The runtime's program; the runtime's name unless a test or a site points elsewhere.
    executable: str | None = None

    @property
    def program(self) -> str:
        return self.executable or self.runtime

    def with_image(self, image: str) -> ContainerSpec:
        return ContainerSpec(self.runtime, check_image(image), self.options, self.executable)

    def describe(self) -> str:
        return f"{self.runtime} image {self.image!r}" if self.image else self.runtime


@dataclass(frozen=True)
class LaunchContext:
    """What the engine knows about one launch: where its files are, how it talks."""

    #: Mounted read-write at the same path, so logs, certificates and task directories
    #: have the same names inside and outside the container.
    run_dir: str
    #: Keep stdin open (``-i``): process-pool workers speak over stdin/stdout.
    stdio: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    #: Names of host environment variables to pass through when set.
    forward_env: tuple[str, ...] = FORWARDED_ENV
    #: Directories under ``run_dir`` mounted again, read-only, at the same path: what the
    #: endpoint lends its workers (`endpoint.containers.overlay`), which a task must not be
    #: able to change for the tasks and pools after it.
    read_only: tuple[str, ...] = ()
    #: ``uid:gid`` docker runs the worker as: the endpoint's own, so the worker can use the
    #: endpoint directory (0700) and leaves files the endpoint can remove. None: the image's.
    user: str | None = field(default_factory=lambda: f"{os.getuid()}:{os.getgid()}")

    def forwarded(self) -> list[str]:
        return [name for name in self.forward_env if name in os.environ]


def check_image(image: str) -> str:
    """``image`` if it can only be read as an image name, else a ConfigError saying why.

    Images can come from task submitters (``container_image``); one that starts with ``-``
    would be read by the runtime as an option (``--privileged``), and whitespace or control
    characters have no place in a name, a path or a URI.
    """
    if not image or len(image) > MAX_IMAGE_LENGTH:
        raise ConfigError(f"an image name must have 1 to {MAX_IMAGE_LENGTH} characters")
    if image.startswith("-"):
        raise ConfigError(f"image {image!r} starts with '-' (it would be read as an option)")
    if any(c.isspace() or not c.isprintable() for c in image):
        raise ConfigError(f"image {image!r} contains whitespace or control characters")
    return image


def parse_options(text: str | None, *, key: str = "container_cmd_options") -> tuple[str, ...]:
    """Split an options string the way a POSIX shell would, or say what is wrong with it."""
    if not text:
        return ()
    try:
        return tuple(shlex.split(text))
    except ValueError as e:  # unbalanced quotes, a trailing backslash
        raise ConfigError(f"{key} cannot be parsed as shell words ({e}): {text!r}") from e


def container_spec(
    container_type: str | None,
    container_uri: str | None = None,
    container_cmd_options: str | None = None,
) -> ContainerSpec | None:
    """The spec an engine's three ``container_*`` options describe (None: no container).

    The config model checks the same rules with line numbers; this repeats them for engines
    built directly from Python.
    """
    if container_type is None or container_type == "None":
        unused = (
            ("container_uri", container_uri),
            ("container_cmd_options", container_cmd_options),
        )
        for name, value in unused:
            if value:
                raise ConfigError(f"{name} has no effect without container_type")
        return None
    if container_type not in RUNTIMES:
        raise ConfigError(
            f"container_type {container_type!r} is not one of {', '.join(RUNTIMES)} or None"
        )
    options = parse_options(container_cmd_options)
    if container_type == "custom":
        if not any(LAUNCH_CMD_PLACEHOLDER in token for token in options):
            raise ConfigError(
                f"container_type custom needs container_cmd_options: the whole command, with"
                f" {LAUNCH_CMD_PLACEHOLDER} where the worker command goes"
            )
        return ContainerSpec("custom", None, options)
    if not container_uri:
        raise ConfigError(f"container_type {container_type} needs container_uri (the image)")
    return ContainerSpec(cast(Runtime, container_type), check_image(container_uri), options)
