"""GlobusMPIEngine's check of a task's resource_specification (endpoint.engines.htex.mpi):
a bad one is refused with the reason before it reaches Parsl (where it would stop the
block's worker pool), and a good one is completed so every launcher line is well formed."""

from __future__ import annotations

from typing import Any

import pytest

from endpoint.engines.htex.mpi import MPISpecError, check_mpi_spec


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"num_nodes": 2}, {"num_nodes": 2, "ranks_per_node": 1, "num_ranks": 2}),
        (
            {"num_nodes": 2, "ranks_per_node": 2},
            {"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 4},
        ),
        # An int per node, never Parsl's 2.0 (srun refuses it); ceil for an uneven split.
        ({"num_nodes": 2, "num_ranks": 4}, {"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 4}),
        ({"num_nodes": 2, "num_ranks": 3}, {"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 3}),
        ({"num_nodes": "2"}, {"num_nodes": 2, "ranks_per_node": 1, "num_ranks": 2}),
        (
            {"num_nodes": 1, "launcher_options": "--cpu-bind=cores"},
            {
                "num_nodes": 1,
                "ranks_per_node": 1,
                "num_ranks": 1,
                "launcher_options": "--cpu-bind=cores",
            },
        ),
    ],
)
def test_a_good_spec_is_completed(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    assert check_mpi_spec(spec, nodes_per_block=2) == expected


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({}, "needs a resource_specification on every task"),
        ({"num_nodes": "two"}, "num_nodes must be a whole number >= 1, got 'two'"),
        ({"num_nodes": 0}, "num_nodes must be a whole number >= 1"),
        ({"num_nodes": True}, "num_nodes must be a whole number >= 1"),
        ({"num_nodes": 5}, "num_nodes 5 is more than a block has"),
        ({"num_node": 2}, "did you mean 'num_nodes'"),
        ({"nodes": 2}, "unknown key(s) 'nodes'"),
        ({"ranks_per_node": 2}, "num_nodes is missing"),
        ({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 9}, "does not fit on 2 node(s)"),
        ({"num_nodes": 2, "num_ranks": 1}, "fewer than num_nodes 2"),
        ({"num_nodes": 1, "launcher_options": ["-x"]}, "launcher_options must be a string"),
    ],
)
def test_a_bad_spec_is_refused_naming_what_is_wrong(spec: dict[str, Any], reason: str) -> None:
    with pytest.raises(MPISpecError) as caught:
        check_mpi_spec(spec, nodes_per_block=2)
    assert reason in str(caught.value)


def test_an_unknown_block_size_is_not_checked() -> None:
    assert check_mpi_spec({"num_nodes": 64}, nodes_per_block=None)["num_nodes"] == 64
