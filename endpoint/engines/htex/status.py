"""The status report of GlobusComputeEngine, built from snapshots (no Parsl calls here).

The fields follow the official engine's report (managers, workers, tasks, scaling and
provider settings, ``node_info``), plus ``running_tasks`` and ``blocks`` (block count by
Parsl job state). Manager records are the interchange's answer to its ``MANAGERS``
command, refreshed in the background by the engine.
"""

from __future__ import annotations

from typing import Any

#: Distribution names whose versions ``node_info`` reports for each worker pool.
_ENDPOINT_DISTS = ("container-compute-endpoint", "globus-compute-endpoint")
_SDK_DIST = "globus-compute-sdk"


def manager_summary(managers: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "managers": len(managers),
        "active_managers": sum(1 for m in managers if m.get("active")),
        "total_workers": sum(int(m["worker_count"]) for m in managers),
        "idle_workers": sum(max(0, int(m["worker_count"]) - int(m["tasks"])) for m in managers),
    }


def capacity(managers: list[dict[str, Any]], prefetch: int) -> int:
    """Task slots of the managers that take work: their workers plus prefetch."""
    active = [m for m in managers if m.get("active")]
    return sum(int(m["worker_count"]) + prefetch for m in active)


def package_versions(packages: dict[str, str]) -> dict[str, str | None]:
    endpoint = next((packages[d] for d in _ENDPOINT_DISTS if d in packages), None)
    return {"endpoint_version": endpoint, "sdk_version": packages.get(_SDK_DIST)}


def node_info(
    blocks_to_job_id: dict[str, Any],
    managers: list[dict[str, Any]],
    versions: dict[str, dict[str, str | None]],
) -> dict[str, list[dict[str, Any]]]:
    """Worker pools by batch job id (the official ``node_info`` shape)."""
    info: dict[str, list[dict[str, Any]]] = {}
    for m in managers:
        job_id = str(blocks_to_job_id.get(m["block_id"], m["block_id"]))
        info.setdefault(job_id, []).append(
            {
                "worker_count": m["worker_count"],
                "idle_duration": m["idle_duration"],
                "parsl_version": m.get("parsl_version"),
                **versions.get(m["manager"], {}),
                "python_version": m.get("python_version"),
            }
        )
    return info


def settings_status(engine_type: str, executor: Any, scaling: dict[str, Any]) -> dict[str, Any]:
    """The fields that come from configuration rather than from live state."""
    provider = executor.provider
    per_node = executor.max_workers_per_node
    return {
        "scaling_enabled": provider.max_blocks > 0 and scaling["strategy"] != "none",
        "mem_per_worker": executor.mem_per_worker,
        "cores_per_worker": executor.cores_per_worker,
        "prefetch_capacity": executor.prefetch_capacity,
        "max_blocks": provider.max_blocks,
        "min_blocks": provider.min_blocks,
        # Parsl's "unlimited" is float('inf'), which JSON cannot carry.
        "max_workers_per_node": None if per_node == float("inf") else per_node,
        "nodes_per_block": provider.nodes_per_block,
        "engine_type": engine_type,
        "provider_type": type(provider).__name__,
        "queue": _first_attr(provider, ("queue", "partition")),
        "account": _first_attr(provider, ("account", "allocation", "project")),
    }


def _first_attr(obj: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value:
            return value
    return None
