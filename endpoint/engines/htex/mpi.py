"""GlobusMPIEngine: GlobusComputeEngine on Parsl's MPIExecutor, for multi-node MPI tasks.

Each block is one worker pool on the block's first node; a task claims ``num_nodes`` of the
block's nodes and finds its launcher prefix in ``$PARSL_MPI_PREFIX`` (the SDK's
``MPIFunction`` uses it). Every task must therefore carry a ``resource_specification``
(``num_nodes``, ``ranks_per_node``, ``num_ranks``, ``launcher_options``); a task without one
gets a ``ResourceSpecificationNotSupported`` error Result. MPI tasks are never batched.

Built from a validated `GlobusMPIEngineConfig`, whose default provider already carries the
single-pool launcher MPIExecutor insists on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from endpoint.engines.htex.engine import GlobusComputeEngine

if TYPE_CHECKING:
    from endpoint.config.htex import GlobusMPIEngineConfig, ParslEngineConfig


class GlobusMPIEngine(GlobusComputeEngine):
    def __init__(self, config: GlobusMPIEngineConfig) -> None:
        super().__init__(config)

    @classmethod
    def _executor_class(cls) -> type:
        from endpoint.engines.htex.parsl_glue import EngineMPIExecutor

        return EngineMPIExecutor

    def _executor_options(self, config: ParslEngineConfig) -> dict[str, Any]:
        from endpoint.config.htex import GlobusMPIEngineConfig

        assert isinstance(config, GlobusMPIEngineConfig)  # __init__ takes no other
        options = super()._executor_options(config)
        # The model's own fields, since MPIExecutor takes them as keywords.
        options.update(
            mpi_launcher=config.mpi_launcher, max_workers_per_block=config.max_workers_per_block
        )
        return options

    def _needs_resource_spec(self) -> bool:
        return True


__all__ = ["GlobusMPIEngine"]
