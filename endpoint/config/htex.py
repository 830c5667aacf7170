"""GlobusComputeEngine and GlobusMPIEngine: engines whose workers Parsl starts.

Besides their own keys, these engines accept every keyword of the Parsl executor they wrap
(``HighThroughputExecutor`` or ``MPIExecutor``) directly under ``engine:``, as the official
endpoint does. Those keys are collected into `ParslEngineConfig.htex_options` and checked
against the executor's signature, names *and* value types, so ``max_workers_per_nod: 2`` or
``heartbeat_period: often`` fail while the config is checked instead of when a block starts.
Parsl is imported only for these two engine types.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import typing
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PydanticSchemaGenerationError,
    PydanticUserError,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from endpoint.config import parsl_types, retired
from endpoint.config.containers import ContainerSettings
from endpoint.config.engines import EngineConfig
from endpoint.config.issues import Issue, did_you_mean, fail, fail_at

log = logging.getLogger(__name__)

#: The field holding executor keywords; in YAML they sit directly under ``engine:``.
PASSTHROUGH = "htex_options"

#: Providers that run containers themselves; an engine-level image would be a second one.
SELF_CONTAINED_PROVIDERS = ("AWSProvider", "GoogleCloudProvider", "KubernetesProvider")

#: Most tasks per Parsl message when the queue is deep (``task_batch_size``).
DEFAULT_TASK_BATCH_SIZE = 64
#: The one launcher GlobusMPIEngine's provider may have: a single worker pool per block,
#: whose tasks spread their ranks over the block's nodes with srun or mpiexec.
MPI_LAUNCHER = "SimpleLauncher"
_MPI_LAUNCHER_WHY = (
    "GlobusMPIEngine needs SimpleLauncher: it starts one worker pool per block, on its first"
    " node, and each task's MPI launcher (mpi_launcher) places the ranks on the block's nodes"
)
#: GlobusMPIEngine's provider when the file names none.
DEFAULT_MPI_PROVIDER: dict[str, Any] = {
    "type": "LocalProvider",
    "launcher": {"type": MPI_LAUNCHER},
}

STRATEGIES = ("simple", "none", "htex_auto_scale")
#: ``strategy: {type: ...}`` mappings from older docs, and the Parsl strategy each means.
_STRATEGY_CLASSES = {"SimpleStrategy": "simple", "KubeSimpleStrategy": "simple"}

_CPU_AFFINITY = re.compile(r"^(none|block|alternating|block-reverse|list:.+)$")
#: Lower bounds Parsl assumes but does not check until a worker starts.
_MINIMUM: dict[str, float] = {
    "max_workers_per_node": 1,
    "prefetch_capacity": 0,
    "heartbeat_period": 1,
    "heartbeat_threshold": 1,
    "poll_period": 1,
}

#: Executor keywords the engine models own (their values differ from the executor's: e.g.
#: `working_dir` is the task directory, not Parsl's), so they never pass through.
_OWNED = frozenset({"self", "label", "provider", "address", "encrypted", "working_dir"})


_FINITE = ConfigDict(allow_inf_nan=False)


class JobStatusKwargs(BaseModel):
    """How Parsl scales blocks between the provider's min_blocks and max_blocks."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_idletime: float = Field(default=120.0, ge=0)
    strategy: Literal["simple", "none", "htex_auto_scale"] = "simple"
    strategy_period: float = Field(default=5.0, gt=0)
    # Ours: how often the provider is asked about its jobs (squeue, qstat, ...); by default
    # the provider's own period (Slurm 60 s). Not a JobStatusPoller keyword.
    status_polling_interval: float | None = Field(default=None, gt=0)

    def poller_kwargs(self) -> dict[str, Any]:
        """The keywords of Parsl's JobStatusPoller."""
        return self.model_dump(exclude={"status_polling_interval"})


class BlockBreakerConfig(BaseModel):
    """The block circuit breaker (`endpoint.engines.htex.breaker`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: Consecutive blocks that end before a worker connects; 0 turns the breaker off.
    max_failures: int = Field(default=3, ge=0)
    #: Seconds without new blocks once it trips; doubled at each trip in a row, up to
    #: MAX_BACKOFF_S (or this, when larger).
    backoff: float = Field(default=300.0, gt=0)


@functools.cache
def passthrough_keys(executor: str) -> dict[str, TypeAdapter[Any] | None]:
    """The executor's keywords open to configs, each with a checker for its value (or None)."""
    import parsl.executors

    cls = getattr(parsl.executors, executor)
    hints = typing.get_type_hints(cls.__init__)
    keys: dict[str, TypeAdapter[Any] | None] = {}
    for name in inspect.signature(cls.__init__).parameters:
        if name not in _OWNED and name not in retired.ENGINE:
            keys[name] = _adapter(name, hints.get(name))
    return keys


def _adapter(name: str, hint: Any) -> TypeAdapter[Any] | None:
    if name == "block_error_handler":
        return TypeAdapter(bool)  # the callable form can only come from Python
    if hint is None or name == "manager_selector":
        return None  # manager_selector is a {type: ...} spec, checked by parsl_types
    try:
        # Finite numbers only: YAML reads .inf and .nan as floats.
        return TypeAdapter(hint, config=_FINITE)
    except PydanticSchemaGenerationError:
        return None
    except PydanticUserError:  # a hint that carries its own config (a model): as it is
        return TypeAdapter(hint)


def _strip_nulls(spec: Any) -> Any:
    """Drop None values from a spec and its nested specs (a launcher), as upstream does."""
    if not isinstance(spec, dict):
        return spec
    return {k: _strip_nulls(v) for k, v in spec.items() if v is not None}


def _strategy_updates(value: Any) -> dict[str, Any] | list[Issue]:
    """What a deprecated ``strategy`` value means in ``job_status_kwargs`` terms, or why not.

    Issue paths are relative to the ``strategy`` value.
    """
    if isinstance(value, str):
        if value not in STRATEGIES:
            return [((), f"must be one of {', '.join(STRATEGIES)}, got {value!r}")]
        return {"strategy": value}
    if not isinstance(value, dict):
        return [((), f"must be a string ({', '.join(STRATEGIES)})")]
    kind = value.get("type")
    if kind not in _STRATEGY_CLASSES:
        known = ", ".join(_STRATEGY_CLASSES)
        return [(("type",), f"unknown strategy {kind!r}; known: {known}")]
    extra = sorted(set(value) - {"type", "max_idletime"})
    if extra:
        return [((key,), "unknown key; use job_status_kwargs instead") for key in extra]
    updates: dict[str, Any] = {"strategy": _STRATEGY_CLASSES[kind]}
    if "max_idletime" in value:
        updates["max_idletime"] = value["max_idletime"]
    return updates


def _conflicts(updates: dict[str, Any], current: dict[str, Any]) -> list[Issue]:
    return [
        ((), f"conflicts with job_status_kwargs.{key} ({current[key]!r})")
        for key, value in updates.items()
        if key in current and current[key] != value
    ]


def _move_strategy(data: dict[str, Any]) -> None:
    # The official engine still takes `strategy` (deprecated) and older docs wrote it as a
    # mapping that today's official engine passes to Parsl unconverted, which breaks at
    # start. We convert both forms into job_status_kwargs, where they belong. A value we
    # cannot convert stays put for the `strategy` field validator to report, alongside
    # every other problem in the file.
    current = data.get("job_status_kwargs", {})
    if "strategy" not in data or not isinstance(current, dict):
        return
    updates = _strategy_updates(data["strategy"])
    if isinstance(updates, list) or _conflicts(updates, current):
        return
    del data["strategy"]
    log.warning("engine.strategy is deprecated; read it as job_status_kwargs: %s", updates)
    data["job_status_kwargs"] = {**current, **updates}


def _is_port_pair(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], int)


def _rename_worker_ports(data: dict[str, Any]) -> None:
    # Parsl once listened on a pair of worker ports (tasks, results); it now uses one. A
    # value we cannot convert stays and is reported with the other executor options.
    ports = data.get("worker_ports")
    if not _is_port_pair(ports) or "worker_port" in data:
        return
    port = data.pop("worker_ports")[0]
    log.warning("engine.worker_ports is deprecated; Parsl now uses one port: worker_port %s", port)
    data["worker_port"] = port


def _worker_ports_problem(value: Any) -> str:
    if _is_port_pair(value):
        return "conflicts with worker_port; keep only worker_port"
    return f"must be a pair of ports [task_port, result_port], got {value!r}"


class ParslEngineConfig(ContainerSettings, EngineConfig):
    """What GlobusComputeEngine and GlobusMPIEngine share."""

    #: The Parsl executor (in `parsl.executors`) whose keywords pass through.
    executor_class: ClassVar[str] = "HighThroughputExecutor"
    #: Executor keywords this engine refuses, with the reason.
    refused: ClassVar[dict[str, str]] = {}

    encrypted: bool = True  # CurveZMQ between interchange and workers
    job_status_kwargs: JobStatusKwargs = Field(default_factory=JobStatusKwargs)
    block_breaker: BlockBreakerConfig = Field(default_factory=BlockBreakerConfig)
    # Deprecated; a usable value is moved into job_status_kwargs before validation, so one
    # that reaches the field is an error. Never dumped.
    strategy: Any = Field(default=None, exclude=True, repr=False)
    # Ours: the most tasks sent to the interchange in one message when the queue is deep
    # (1 turns batching off; a shallow queue always sends tasks alone).
    task_batch_size: int = Field(default=DEFAULT_TASK_BATCH_SIZE, ge=1)
    provider: dict[str, Any] = Field(default_factory=lambda: {"type": "LocalProvider"})
    # None: Parsl offers workers every local address.
    address: str | dict[str, Any] | None = None
    # Declared after provider, whose validated value the checks of these options use.
    htex_options: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def _normalize(cls, data: dict[str, Any]) -> dict[str, Any]:
        if PASSTHROUGH in data:
            fail_at(PASSTHROUGH, "unknown key")
        data = super()._normalize(data)
        _move_strategy(data)
        _rename_worker_ports(data)
        own = set(cls.model_fields) - {PASSTHROUGH}
        extras = {key: data.pop(key) for key in list(data) if key not in own}
        if extras:
            data[PASSTHROUGH] = extras
        return data

    @field_validator("strategy")
    @classmethod
    def _check_strategy(cls, value: Any, info: ValidationInfo) -> None:
        if value is None:
            return None
        updates = _strategy_updates(value)
        if isinstance(updates, list):
            fail(updates)
        current = info.data.get("job_status_kwargs")
        if not isinstance(current, JobStatusKwargs):
            return None  # job_status_kwargs itself is invalid and reported
        # Reached with a JobStatusKwargs object (Python callers): no mapping to merge into.
        conflicts = _conflicts(updates, current.model_dump(exclude_unset=True))
        fail(conflicts or [((), "deprecated; set it in job_status_kwargs instead")])

    @field_validator("provider", mode="before")
    @classmethod
    def _check_provider(cls, value: Any) -> Any:
        value = _strip_nulls(value)
        problems = parsl_types.check_spec("provider", value)
        if problems:
            fail(problems)
        return value

    @field_validator("address", mode="before")
    @classmethod
    def _check_address(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            fail([((), "must not be empty (leave it out for the engine's default)")])
        if value is None or isinstance(value, str):
            return value
        value = _strip_nulls(value)
        problems = parsl_types.check_spec("address", value)
        if problems:
            fail(problems)
        return value

    @field_validator(PASSTHROUGH)
    @classmethod
    def _check_passthrough(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        provider = info.data.get("provider")
        provider_keys: set[str] = set()
        if isinstance(provider, dict) and isinstance(provider.get("type"), str):
            provider_keys = parsl_types.options("provider", provider["type"])
        checked: dict[str, Any] = {}
        issues: list[Issue] = []
        for key, item in value.items():
            found = cls._check_option(key, item, provider_keys)
            if isinstance(found, list):
                issues += found
            else:
                checked[key] = found[0]
        if issues:
            fail(issues)
        return checked

    @classmethod
    def _check_option(
        cls, key: str, value: Any, provider_keys: set[str]
    ) -> list[Issue] | tuple[Any]:
        """The checked value (in a 1-tuple), or the problems with it."""
        known = passthrough_keys(cls.executor_class)
        refusal = cls.refused.get(key) or retired.engine_key(key)
        if refusal:
            return [((key,), refusal)]
        if key == "worker_ports":
            return [((key,), _worker_ports_problem(value))]
        if key not in known:
            return [((key,), cls._unknown(key, known, provider_keys))]
        if key == "manager_selector":
            problems = parsl_types.check_spec("manager_selector", value)
            return [((key, *path), msg) for path, msg in problems] or (value,)
        if key == "available_accelerators" and isinstance(value, list):
            value = [str(item) for item in value]  # YAML writes device ids as numbers
        adapter = known[key]
        if adapter is not None:
            try:
                value = adapter.validate_python(value)
            except ValidationError as e:
                return [((key,), e.errors()[0]["msg"])]
        problem = _value_problem(key, value)
        return [((key,), problem)] if problem else (value,)

    @classmethod
    def _unknown(cls, key: str, known: dict[str, Any], provider_keys: set[str]) -> str:
        if key in provider_keys:
            return "an option of the provider; move it under engine.provider"
        names = set(known) | set(cls.model_fields) - {PASSTHROUGH}
        engine = cls.model_fields["type"].default
        return (
            f"unknown key: not an option of {engine} or of Parsl's {cls.executor_class}"
            f"{did_you_mean(key, names)}"
        )

    @model_validator(mode="after")
    def _check_container_provider(self) -> ParslEngineConfig:
        provider_type = self.provider.get("type")
        if self.container_type and provider_type in SELF_CONTAINED_PROVIDERS:
            key = "container_uri" if self.container_uri else "container_type"
            fail_at(
                key,
                f"not compatible with {provider_type}, which starts containers itself;"
                " set the image on the provider (e.g. provider.image)",
            )
        return self

    def engine_spec(self) -> dict[str, Any]:
        spec = super().engine_spec()
        spec.update(spec.pop(PASSTHROUGH, {}))
        return spec


def _value_problem(key: str, value: Any) -> str | None:
    if key == "cpu_affinity" and not _CPU_AFFINITY.match(str(value)):
        return "must be none, block, alternating, block-reverse or list:<cpus>"
    minimum = _MINIMUM.get(key)
    if minimum is not None and isinstance(value, int | float) and value < minimum:
        return f"must be at least {minimum:g}, got {value}"
    return None


class GlobusComputeEngineConfig(ParslEngineConfig):
    """Workers started by Parsl's HighThroughputExecutor through a provider (local or batch)."""

    refused: ClassVar[dict[str, str]] = retired.GCE
    type: Literal["GlobusComputeEngine"] = "GlobusComputeEngine"


class GlobusMPIEngineConfig(ParslEngineConfig):
    """Like GlobusComputeEngine, on Parsl's MPIExecutor: tasks carry MPI resource specs."""

    executor_class: ClassVar[str] = "MPIExecutor"
    type: Literal["GlobusMPIEngine"] = "GlobusMPIEngine"
    # MPIExecutor insists on a launcher that starts a single worker pool per block.
    provider: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_MPI_PROVIDER))
    mpi_launcher: Literal["mpiexec", "srun", "aprun"] = "mpiexec"
    max_workers_per_block: int = Field(default=1, ge=1)

    @field_validator("provider")
    @classmethod
    def _single_pool_launcher(cls, value: dict[str, Any]) -> dict[str, Any]:
        """MPIExecutor starts one worker pool per block, on its first node, and refuses any
        launcher but SimpleLauncher when the engine is built; say so while checking, and fill
        it in when the provider names none (the only one that works)."""
        launcher = value.get("launcher")
        if launcher is None:
            if "launcher" not in parsl_types.options("provider", value["type"]):
                fail_at(
                    "type",
                    f"{value['type']} takes no launcher; GlobusMPIEngine needs a provider"
                    " with launcher: {type: SimpleLauncher}",
                )
            return {**value, "launcher": {"type": MPI_LAUNCHER}}
        if launcher.get("type") != MPI_LAUNCHER:
            fail([(("launcher", "type"), _MPI_LAUNCHER_WHY)])
        return value

    @model_validator(mode="after")
    def _refuse_routing(self) -> GlobusMPIEngineConfig:
        # MPI tasks size their nodes through the resource specification; a second
        # dimension (the image) would need a pool per image *and* node shape.
        if self.container_routing is not None:
            fail_at("container_routing", "not supported on GlobusMPIEngine; use a static image")
        return self
