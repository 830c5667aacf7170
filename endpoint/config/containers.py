"""Engine keys for workers in containers, and for routing tasks to per-image pools.

Shared by GlobusComputeEngine (each block's worker pool runs in the container) and
ProcessPoolEngine (each worker process runs in its own container)::

    engine:
      type: GlobusComputeEngine          # or ProcessPoolEngine
      container_type: docker             # docker | podman | podman-hpc | apptainer |
                                         # singularity | custom | None
      container_uri: my/worker:1.0       # the default pool's image (optional with routing)
      container_cmd_options: "-e 'A=b c' -v /data:/data"
      container_routing: soft            # soft | hard | None (default: no per-task images)
      max_warm_containers: 3             # soft: most image pools alive at once
      container_max_idletime: 120        # soft: seconds before an idle pool is retired
      container_images: [a:1, b:2]       # hard: the static pools; soft: allowed images
      container_workers: 1               # workers in each image pool

Tasks pick an image with the SDK's ``resource_specification={"container_image": ...}``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from endpoint.config.issues import Issue, fail
from endpoint.containers.router import (
    DEFAULT_MAX_IDLETIME,
    DEFAULT_MAX_WARM,
    DEFAULT_POOL_WORKERS,
)
from endpoint.containers.spec import (
    APPTAINER_FAMILY,
    DOCKER_FAMILY,
    LAUNCH_CMD_PLACEHOLDER,
    check_image,
    parse_options,
)
from endpoint.errors import ConfigError

log = logging.getLogger(__name__)

ContainerType = Literal["docker", "podman", "podman-hpc", "apptainer", "singularity", "custom"]
RoutingMode = Literal["soft", "hard"]

#: Keys that mean nothing unless container_routing is set.
ROUTING_OPTIONS = (
    "max_warm_containers",
    "container_max_idletime",
    "container_images",
    "container_workers",
)
#: Of those, the ones hard routing ignores (its pools are static, one per image).
SOFT_ONLY = ("max_warm_containers", "container_max_idletime")


class ContainerSettings(BaseModel):
    """Mixed into the configs of engines whose workers may run in containers.

    A mixin rather than a base class so that `endpoint.config.engines` can use it without
    an import cycle; the engine config classes put it first, before `EngineConfig`.
    """

    model_config = ConfigDict(allow_inf_nan=False)  # merged with the engine model's

    container_type: ContainerType | None = None
    container_uri: str | None = None
    container_cmd_options: str | None = None
    container_routing: RoutingMode | None = None
    max_warm_containers: int = Field(default=DEFAULT_MAX_WARM, ge=1)
    container_max_idletime: float = Field(default=DEFAULT_MAX_IDLETIME, ge=0)
    container_images: list[str] | None = None
    container_workers: int = Field(default=DEFAULT_POOL_WORKERS, ge=1)

    @classmethod
    def _normalize(cls, data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        for key in ("container_type", "container_routing"):
            if data.get(key) == "None":  # the docs list 'None' as a choice
                del data[key]
        return data

    @model_validator(mode="after")
    def _check_container_settings(self) -> ContainerSettings:
        issues = container_issues(self) + routing_issues(self)
        if issues:
            fail(issues)
        return self


def container_issues(engine: ContainerSettings) -> list[Issue]:
    """Container settings that cannot work together (the official engine asserts or ignores)."""
    kind, uri, options = engine.container_type, engine.container_uri, engine.container_cmd_options
    if kind is None:
        unused = [k for k in ("container_uri", "container_cmd_options") if getattr(engine, k)]
        return [((k,), "has no effect without container_type") for k in unused]
    try:
        parse_options(options)
    except ConfigError as e:
        return [(("container_cmd_options",), str(e).removeprefix("container_cmd_options "))]
    routed = engine.container_routing is not None
    if kind in DOCKER_FAMILY + APPTAINER_FAMILY and not uri and not routed:
        return [(("container_type",), f"{kind} needs container_uri (the image to run)")]
    if uri:
        try:
            check_image(uri)
        except ConfigError as e:
            return [(("container_uri",), str(e))]
    if kind != "custom":
        return []
    if uri:
        log.warning("engine.container_uri is ignored with container_type custom")
    return _custom_issues(options)


def _custom_issues(options: str | None) -> list[Issue]:
    if not options:
        return [
            (
                ("container_type",),
                "custom needs container_cmd_options: the whole command, with"
                f" {LAUNCH_CMD_PLACEHOLDER} where the worker command goes",
            )
        ]
    if LAUNCH_CMD_PLACEHOLDER not in options:
        return [
            (
                ("container_cmd_options",),
                f"must contain {LAUNCH_CMD_PLACEHOLDER}, or the container never starts a worker",
            )
        ]
    return []


def routing_issues(engine: ContainerSettings) -> list[Issue]:
    """Routing keys that cannot work together or would silently do nothing."""
    # Compared with the defaults, not with what the file spelled out: a config written back
    # with every default filled in (check-config) must load again.
    fields = type(engine).model_fields
    given = {k for k in ROUTING_OPTIONS if getattr(engine, k) != fields[k].default}
    mode = engine.container_routing
    if mode is None:
        stray = [k for k in ROUTING_OPTIONS if k in given]
        return [((k,), "has no effect without container_routing") for k in stray]
    issues: list[Issue] = []
    if engine.container_type in (None, "custom"):
        issues.append(
            (
                ("container_routing",),
                "needs an image-based container_type (docker, podman, podman-hpc, apptainer"
                " or singularity): the runtime that runs each image's pool",
            )
        )
    images = engine.container_images or []
    for image in images:
        try:
            check_image(image)
        except ConfigError as e:
            issues.append((("container_images",), str(e)))
    if len(set(images)) != len(images):
        issues.append((("container_images",), "lists an image more than once"))
    if mode == "hard":
        if not images:
            issues.append(
                (("container_routing",), "hard needs container_images (one static pool each)")
            )
        issues += [
            ((k,), "has no effect with container_routing: hard (pools are static)")
            for k in SOFT_ONLY
            if k in given
        ]
    return issues
