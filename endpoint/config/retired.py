"""Keys we refuse on purpose, each with the reason and what to write instead.

The official endpoint silently accepts several keys it never reads (``log_dir``, ``stdout``,
``stderr``; ``heartbeat_threshold``, which it also ignores, we implement instead) and, over
its history, removed others. A file carrying one of them usually means the author expects a
behaviour they will not get, so we stop and say so instead of ignoring the key. Versions
below are the official releases.
"""

from __future__ import annotations

_FUNCX_ROUTING = (
    "funcX container routing (worker_mode/scheduler_mode) was removed in 3.0; route tasks to"
    " per-image pools with engine.container_routing (soft or hard) and engine.container_type,"
    " or run every worker in one image with container_type and container_uri"
)
_NEVER_READ = "accepted but never read by the official endpoint, so it would do nothing"

#: Top-level keys of either document kind.
TOP_LEVEL: dict[str, str] = {
    "executors": "removed in 4.6; use engine: (e.g. engine: {type: GlobusComputeEngine,"
    " provider: {type: LocalProvider}})",
    "multi_user": "removed in 4.10.1; a config.yaml without engine: is a manager endpoint and"
    " one with engine: is a user endpoint",
    "force_mu_allow_same_user": "removed in 4.10.1 together with multi_user; a manager that"
    " cannot change uid runs user endpoints as its own user",
    "detach_endpoint": "removed in 4.10.1; endpoints run in the foreground (use a service"
    " manager or `enable-on-boot` to keep one running)",
    "log_dir": f"{_NEVER_READ}; use paths.endpoint_log to choose the log file",
    "stdout": f"{_NEVER_READ}; use paths.endpoint_log to choose the log file",
    "stderr": f"{_NEVER_READ}; use paths.endpoint_log to choose the log file",
    "mode": "removed: a config with an engine: block is a user endpoint; one without engine: is"
    " a manager endpoint",
    "worker_mode": _FUNCX_ROUTING,
    "scheduler_mode": _FUNCX_ROUTING,
    "cold_routing_interval": _FUNCX_ROUTING,
    "funcx_service_address": "funcX 0.x setting; the service is chosen with environment:",
    "results_ws_uri": "funcX 0.x setting; the service is chosen with environment:",
}

#: Keys of a manager config (`ManagerConfig`) found in a user endpoint config.
MANAGER_ONLY = (
    "only valid in a manager config (a core endpoint's: a config.yaml without engine:); a user"
    " endpoint (one with engine:) cannot use it"
)

#: Keys of a user endpoint config found in a document without ``engine:``.
USER_ONLY = (
    "only valid in a user endpoint config; this file has no engine: block, so it is read as a"
    " manager (core endpoint) config (add engine: {type: ...} if it should run tasks)"
)

#: Keys of any engine that mean something else now.
ENGINE: dict[str, str] = {
    "enable_mpi_mode": "MPI mode is not supported on GlobusComputeEngine; use type:"
    " GlobusMPIEngine",
    "executor": "a prebuilt Parsl executor can only be passed from Python; set its options on"
    " the engine instead",
    "interchange_launch_cmd": "the engine launches the interchange itself; remove it",
    "storage_access": "Parsl data staging is not used by Compute tasks; remove it",
    "remote_monitoring_radio": "Parsl monitoring is not wired into the endpoint; remove it",
    "worker_mode": _FUNCX_ROUTING,
    "scheduler_mode": _FUNCX_ROUTING,
    "cold_routing_interval": _FUNCX_ROUTING,
    "worker_max_idletime": "funcX 0.x setting; use job_status_kwargs.max_idletime",
}

#: Keys that only GlobusComputeEngine/GlobusMPIEngine understand (for pool-engine errors).
HTEX_ONLY_HINT = (
    "an option of GlobusComputeEngine, not of {engine}; use type: GlobusComputeEngine to"
    " run workers through a Parsl provider"
)

#: HTEX passthrough keys that GlobusComputeEngine replaces or refuses.
GCE: dict[str, str] = {
    "mpi_launcher": "an option of GlobusMPIEngine; use type: GlobusMPIEngine for MPI tasks",
    "max_workers": "not an option of GlobusComputeEngine; Parsl renamed it max_workers_per_node",
    "max_workers_per_block": "an option of GlobusMPIEngine; GlobusComputeEngine uses"
    " max_workers_per_node",
}

#: Engine type names that no longer exist.
ENGINE_TYPES: dict[str, str] = {
    "HighThroughputEngine": "HighThroughputEngine was removed in 3.0; use GlobusComputeEngine",
    "HighThroughputExecutor": "HighThroughputExecutor is wrapped by GlobusComputeEngine; use"
    " type: GlobusComputeEngine",
}


def top_level(key: str) -> str | None:
    return TOP_LEVEL.get(key)


def engine_key(key: str) -> str | None:
    return ENGINE.get(key)
