"""GlobusMPIEngine: GlobusComputeEngine on Parsl's MPIExecutor, for multi-node MPI tasks.

Each block is one worker pool on the block's first node; a task claims ``num_nodes`` of the
block's nodes and finds its launcher prefix in ``$PARSL_MPI_PREFIX`` (the SDK's
``MPIFunction`` uses it). Every task must therefore carry a ``resource_specification``
(``num_nodes``, ``ranks_per_node``, ``num_ranks``, ``launcher_options``); a task without one
gets a ``ResourceSpecificationNotSupported`` error Result. MPI tasks are never batched.
"""

from __future__ import annotations

from typing import Any

from endpoint.engines.htex.engine import GlobusComputeEngine

#: MPIExecutor insists on a launcher that starts a single pool per block.
DEFAULT_MPI_PROVIDER: dict[str, Any] = {
    "type": "LocalProvider",
    "init_blocks": 1,
    "min_blocks": 0,
    "max_blocks": 1,
    "launcher": {"type": "SimpleLauncher"},
}


class GlobusMPIEngine(GlobusComputeEngine):
    _REFUSED: frozenset[str] = frozenset()

    def __init__(
        self,
        *,
        label: str = "GlobusMPIEngine",
        provider: dict[str, Any] | None = None,
        mpi_launcher: str = "mpiexec",
        max_workers_per_block: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            label=label,
            provider=DEFAULT_MPI_PROVIDER if provider is None else provider,
            mpi_launcher=mpi_launcher,
            max_workers_per_block=max_workers_per_block,
            **kwargs,
        )

    @classmethod
    def _executor_class(cls) -> type:
        from endpoint.engines.htex.parsl_glue import EngineMPIExecutor

        return EngineMPIExecutor

    def _needs_resource_spec(self) -> bool:
        return True


__all__ = ["GlobusMPIEngine"]
