"""GlobusMPIEngine: GlobusComputeEngine on Parsl's MPIExecutor, for multi-node MPI tasks.

Each block is one worker pool on the block's first node; a task claims ``num_nodes`` of the
block's nodes and finds its launcher prefix in ``$PARSL_MPI_PREFIX`` (the SDK's
``MPIFunction`` uses it). Every task must therefore carry a ``resource_specification``
(``num_nodes``, ``ranks_per_node``, ``num_ranks``, ``launcher_options``); a task without one
gets a ``ResourceSpecificationNotSupported`` error Result. MPI tasks are never batched.

The specification is checked here, completely, before the task goes anywhere
(`check_mpi_spec`). Parsl's own check only looks at the key names, and the worker pool's node
scheduler trusts the values: ``num_nodes: "two"`` raised inside the pool and stopped it taking
tasks, ``num_nodes`` larger than a block waited for nodes forever, and a specification without
``num_nodes`` (or with only ``num_ranks``) ran with no launcher prefix and then crashed the
pool's result path. Each of those now fails its own task with a reason, and the engine keeps
serving the others.

Built from a validated `GlobusMPIEngineConfig`, whose default provider already carries the
single-pool launcher MPIExecutor insists on.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from endpoint.config.issues import did_you_mean
from endpoint.engines.htex.engine import GlobusComputeEngine

if TYPE_CHECKING:
    from endpoint.config.htex import GlobusMPIEngineConfig, ParslEngineConfig

#: The keys of an MPI task's resource_specification (those Parsl's MPIExecutor knows).
MPI_SPEC_KEYS = ("num_nodes", "ranks_per_node", "num_ranks", "launcher_options")
#: The integer-valued ones.
_COUNTS = ("num_nodes", "ranks_per_node", "num_ranks")
EXAMPLE = "{'num_nodes': 2, 'ranks_per_node': 2}"


class MPISpecError(ValueError):
    """A task's resource_specification cannot run on this engine's blocks."""


def check_mpi_spec(spec: Mapping[str, Any], nodes_per_block: int | None) -> dict[str, Any]:
    """The specification made complete (every count an int, ``num_ranks`` and
    ``ranks_per_node`` filled in), or `MPISpecError` naming what is wrong.

    ``nodes_per_block`` is how many nodes a block has (None: unknown, not checked).
    """
    if not spec:
        raise MPISpecError(
            "GlobusMPIEngine needs a resource_specification on every task, with num_nodes"
            f" (e.g. {EXAMPLE})"
        )
    unknown = [key for key in spec if key not in MPI_SPEC_KEYS]
    if unknown:
        raise MPISpecError(_unknown_keys(unknown))
    counts = {key: _count(key, spec[key]) for key in _COUNTS if key in spec}
    if "num_nodes" not in counts:
        raise MPISpecError(
            f"num_nodes is missing: say how many nodes the task needs, e.g. {EXAMPLE}"
        )
    nodes = counts["num_nodes"]
    if nodes_per_block is not None and nodes > nodes_per_block:
        raise MPISpecError(
            f"num_nodes {nodes} is more than a block has: each block has {nodes_per_block}"
            f" node(s) (provider.nodes_per_block); ask for at most {nodes_per_block}"
        )
    checked: dict[str, Any] = {**counts, **_ranks(nodes, counts)}
    if "launcher_options" in spec:
        options = spec["launcher_options"]
        if not isinstance(options, str):
            raise MPISpecError(
                f"launcher_options must be a string of launcher flags, got {options!r}"
            )
        checked["launcher_options"] = options
    return checked


def _unknown_keys(keys: list[str]) -> str:
    named = []
    for key in keys:
        hint = did_you_mean(str(key), MPI_SPEC_KEYS).removeprefix("; ")
        named.append(f"{key!r} ({hint})" if hint else repr(key))
    return (
        f"unknown key(s) {', '.join(named)}; an MPI task's resource_specification"
        f" takes {', '.join(MPI_SPEC_KEYS)}"
    )


def _count(key: str, value: Any) -> int:
    """A count as an int: a whole number >= 1 (a string of digits too, as Parsl writes them)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MPISpecError(f"{key} must be a whole number >= 1, got {value!r}")
    return value


def _ranks(nodes: int, counts: dict[str, int]) -> dict[str, int]:
    """``ranks_per_node`` and ``num_ranks``, consistent, from whichever were given.

    Every launcher prefix needs both (Parsl writes ``None`` for a missing one, and its own
    derivation makes ``2.0`` of 4 ranks on 2 nodes, which srun refuses).
    """
    per_node = counts.get("ranks_per_node")
    total = counts.get("num_ranks")
    if per_node is None:
        per_node = 1 if total is None else -(-total // nodes)  # ceil: the busiest node
    if total is None:
        total = nodes * per_node
    if total < nodes:
        raise MPISpecError(
            f"num_ranks {total} is fewer than num_nodes {nodes}: every node needs a rank"
        )
    if total > nodes * per_node:
        raise MPISpecError(
            f"num_ranks {total} does not fit on {nodes} node(s) x ranks_per_node {per_node}"
        )
    return {"ranks_per_node": per_node, "num_ranks": total}


@functools.cache
def _checking_executor_class() -> type:
    """EngineMPIExecutor whose `validate_resource_spec` (what the engine calls on each task
    before it is queued) runs `check_mpi_spec` ahead of Parsl's own check."""
    from endpoint.engines.htex.parsl_glue import EngineMPIExecutor

    class CheckedMPIExecutor(EngineMPIExecutor):
        def validate_resource_spec(self, resource_specification: dict[str, Any]) -> None:
            nodes = getattr(self.provider, "nodes_per_block", None)
            checked = check_mpi_spec(resource_specification, nodes)
            # In place, as Parsl's does: the engine sends the dict it passed in.
            resource_specification.clear()
            resource_specification.update(checked)
            super().validate_resource_spec(resource_specification)

    return CheckedMPIExecutor


class GlobusMPIEngine(GlobusComputeEngine):
    def __init__(self, config: GlobusMPIEngineConfig) -> None:
        super().__init__(config)

    @classmethod
    def _executor_class(cls) -> type:
        return _checking_executor_class()

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


__all__ = ["MPI_SPEC_KEYS", "GlobusMPIEngine", "MPISpecError", "check_mpi_spec"]
