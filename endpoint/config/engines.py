"""The ``engine:`` block: options every engine shares, and the two local pool engines.

The Parsl-backed engines (GlobusComputeEngine, GlobusMPIEngine) live in `endpoint.config.htex`;
`endpoint.config.model` joins all four into one union discriminated by ``type``.

Each model is inert data and the one source of truth for an engine's options and their
defaults: `endpoint.engines.build.build_engine` hands the validated model to the engine, which
reads its fields and checks nothing again. Checking a config therefore builds nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from endpoint.config.containers import ContainerSettings
from endpoint.protocol.limits import DEFAULT_RESULT_SIZE_LIMIT


class EngineConfig(BaseModel):
    """Options of every engine; subclasses add their own and a ``type`` literal."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: Selects the model (see `endpoint.config.model`); each subclass narrows it.
    type: str

    label: str | None = None
    # Resubmissions after a *system* failure (a lost worker or block); user exceptions are
    # results, never retried.
    max_retries_on_system_failure: int = Field(default=0, ge=0)
    # Relative to the endpoint directory.
    working_dir: str = Field(default="tasks_working_dir", min_length=1)
    run_in_sandbox: bool = False
    allowed_serializers: list[str] | None = None
    result_size_limit: int = Field(default=DEFAULT_RESULT_SIZE_LIMIT, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        # As upstream: `key: null` inside the engine means "use the engine's default", which
        # lets templates render an unset variable as null.
        if isinstance(data, dict):
            return cls._normalize({k: v for k, v in data.items() if v is not None})
        return data

    @classmethod
    def _normalize(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Rewrite accepted-but-deprecated spellings before validation (subclass hook)."""
        return data

    @field_validator("allowed_serializers")
    @classmethod
    def _check_serializers(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        # Imported here: the serializer registry pulls in dill, which a config check of a
        # pool engine should not have to pay for unless the key is used.
        from endpoint.errors import ConfigError
        from endpoint.protocol.serialize import parse_allowlist

        try:
            parse_allowlist(value)
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("allowed_serializers: ")) from None
        return value

    def engine_spec(self) -> dict[str, Any]:
        """``{"type": ..., **options}``: the keys the file set, flattened as it wrote them.

        Only keys the file set (or a validator normalised) are included, and None values are
        left out. For showing and comparing configs; engines are built from the model itself.
        """
        options = self.model_dump(exclude_unset=True, exclude_none=True, exclude={"type"})
        return {"type": self.type, **options}


class ThreadPoolEngineConfig(EngineConfig):
    """Tasks run on threads of the endpoint process."""

    type: Literal["ThreadPoolEngine"] = "ThreadPoolEngine"
    # None: Python's ThreadPoolExecutor default, min(32, cpus + 4).
    max_workers: int | None = Field(default=None, ge=1)


class ProcessPoolEngineConfig(ContainerSettings, EngineConfig):
    """Tasks run in a pool of local worker processes (each in a container, optionally)."""

    type: Literal["ProcessPoolEngine"] = "ProcessPoolEngine"
    # None: one worker per CPU.
    max_workers: int | None = Field(default=None, ge=1)
    # Recycle a worker after this many tasks (None: never), e.g. to bound leaks.
    max_tasks_per_child: int | None = Field(default=None, ge=1)
