"""Turning GlobusComputeEngine's configuration into a Parsl executor and scaling settings.

Every HighThroughputExecutor option passes through by its Parsl name. This module converts
the values YAML can express into what Parsl's type-checked constructor wants (lists into
tuples, accelerator numbers into names, ``{type: ...}`` mappings into providers, launchers,
address functions and manager selectors) and reports every mistake as a `ConfigError` that
names the key, instead of a ``TypeError`` from inside Parsl.

Parsl (and the config package's Parsl type table) is imported inside the functions, so
importing this module stays cheap: every Parsl worker imports the engines package.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import shlex
import sys
from typing import Any

from endpoint.errors import ConfigError

log = logging.getLogger(__name__)

#: Options the engine sets itself; a config may not hand them to Parsl directly.
ENGINE_OWNED = frozenset({"self", "label", "provider", "address", "encrypted", "working_dir"})
#: Accepted for configs written for older Parsl (two ports, task and result); now one port.
COMPAT_OPTIONS = frozenset({"worker_ports"})
#: MPI options GlobusComputeEngine refuses with a pointer to GlobusMPIEngine.
MPI_ONLY = frozenset({"enable_mpi_mode", "mpi_launcher"})

DEFAULT_PROVIDER: dict[str, Any] = {
    "type": "LocalProvider",
    "init_blocks": 1,
    "min_blocks": 0,
    "max_blocks": 1,
}
DEFAULT_SCALING: dict[str, Any] = {
    "max_idletime": 120.0,
    "strategy": "simple",
    "strategy_period": 5.0,
}
STRATEGIES = ("simple", "htex_auto_scale", "none")

_TUPLE_OPTIONS = ("worker_port_range", "interchange_port_range")
_WORKER_MODULE = "parsl.executors.high_throughput.process_worker_pool"
_INTERCHANGE_MODULE = "parsl.executors.high_throughput.interchange"


def executor_parameters(executor_cls: type) -> frozenset[str]:
    """The keyword names ``executor_cls.__init__`` accepts."""
    params = inspect.signature(executor_cls).parameters
    return frozenset(name for name in params if name != "self")


def passthrough_names(executor_cls: type, refused: frozenset[str]) -> frozenset[str]:
    """Names a config may give for Parsl: its parameters, compat names, pointed refusals."""
    return (executor_parameters(executor_cls) - ENGINE_OWNED) | COMPAT_OPTIONS | refused


def build_provider(spec: Any) -> Any:
    """A Parsl provider from ``{type: SlurmProvider, ...}`` (or a ready-made provider)."""
    from parsl.providers.base import ExecutionProvider

    from endpoint.config.parsl_types import build

    if isinstance(spec, ExecutionProvider):
        return spec
    if spec is None:
        spec = DEFAULT_PROVIDER
    if not isinstance(spec, dict):
        raise ConfigError(f"provider must be a mapping with a 'type' key, got {spec!r}")
    try:
        return build("provider", spec)
    except ConfigError:
        raise
    except Exception as e:  # the provider's own checks (typeguard, values)
        raise ConfigError(f"provider ({spec.get('type')}): {e}") from e


def resolve_address(address: Any, provider: Any) -> str | None:
    """The interchange address workers connect to.

    With a LocalProvider the workers run on this host, so loopback always reaches the
    interchange; Parsl's default would listen on, and have workers probe, every interface
    (slower to connect, and reachable from the network). Other providers keep Parsl's
    default (all addresses) unless the config names one.
    """
    from parsl.providers import LocalProvider

    if address is None:
        return "127.0.0.1" if isinstance(provider, LocalProvider) else None
    if isinstance(address, str):
        if not address.strip():
            raise ConfigError("address must not be empty")
        return address
    if isinstance(address, dict):
        from endpoint.config.parsl_types import build

        try:
            found = build("address", address)
        except ConfigError:
            raise
        except Exception as e:  # e.g. address_by_interface on a missing interface
            raise ConfigError(f"address ({address.get('type')}): {e}") from e
        if not isinstance(found, str) or not found:
            raise ConfigError(f"address ({address.get('type')}) found no address")
        return found
    raise ConfigError(f"address must be a string or an address mapping, got {address!r}")


def executor_options(options: dict[str, Any], accepted: frozenset[str]) -> dict[str, Any]:
    """Check and convert the pass-through options; unknown names are a ConfigError."""
    unknown = sorted(set(options) - accepted - COMPAT_OPTIONS)
    if unknown:
        raise ConfigError(
            f"{', '.join(unknown)}: not an option of GlobusComputeEngine or of Parsl's"
            f" executor; valid options include: {', '.join(sorted(accepted))}"
        )
    converted = {k: v for k, v in options.items() if v is not None}
    _convert_worker_ports(converted)
    for key in _TUPLE_OPTIONS:
        if isinstance(converted.get(key), list):
            converted[key] = tuple(converted[key])
    accelerators = converted.get("available_accelerators")
    if isinstance(accelerators, list | tuple):
        # YAML writes GPU ids as numbers; Parsl wants their names.
        converted["available_accelerators"] = [str(a) for a in accelerators]
    if "manager_selector" in converted:
        converted["manager_selector"] = _manager_selector(converted["manager_selector"])
    return converted


def _convert_worker_ports(options: dict[str, Any]) -> None:
    ports = options.pop("worker_ports", None)
    if ports is None:
        return
    if "worker_port" in options:
        raise ConfigError("give worker_port or worker_ports, not both")
    if isinstance(ports, int) and not isinstance(ports, bool):
        ports = [ports]
    if not isinstance(ports, list | tuple) or not 1 <= len(ports) <= 2:
        raise ConfigError(f"worker_ports must be a port or a pair of ports, got {ports!r}")
    if len(ports) == 2 and ports[0] != ports[1]:
        # Older Parsl took separate task and result ports; today's HTEX listens on one.
        log.warning("worker_ports %s: Parsl now uses one worker port; using %s", ports, ports[0])
    options["worker_port"] = ports[0]


def _manager_selector(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"type"}:
        value = value["type"]
    if not isinstance(value, str):
        return value  # already a selector object (Python use); Parsl checks it
    module = importlib.import_module("parsl.executors.high_throughput.manager_selector")
    names = sorted(
        n for n in dir(module) if n.endswith("ManagerSelector") and n != "ManagerSelector"
    )
    if value not in names:
        raise ConfigError(f"manager_selector {value!r} is not one of: {', '.join(names)}")
    return getattr(module, value)()


def make_executor(executor_cls: type, **kwargs: Any) -> Any:
    """Build the executor, turning Parsl's type and value checks into ConfigErrors."""
    try:
        return executor_cls(**kwargs)
    except Exception as e:  # typeguard's TypeCheckError, ValueError, TypeError, assert
        # typeguard's messages name the argument, e.g. 'argument "heartbeat_period" ...'
        name = getattr(executor_cls, "parsl_name", executor_cls.__name__)
        raise ConfigError(f"invalid {name} option: {e}") from e


def scaling_settings(strategy: Any, job_status_kwargs: Any) -> dict[str, Any]:
    """JobStatusPoller arguments: defaults, then the deprecated ``strategy``, then the map."""
    settings = dict(DEFAULT_SCALING)
    if strategy is not None:
        log.warning("engine.strategy is deprecated; use engine.job_status_kwargs.strategy")
        settings["strategy"] = strategy
    if job_status_kwargs is None:
        job_status_kwargs = {}
    if not isinstance(job_status_kwargs, dict):
        raise ConfigError(f"job_status_kwargs must be a mapping, got {job_status_kwargs!r}")
    unknown = sorted(set(job_status_kwargs) - set(DEFAULT_SCALING))
    if unknown:
        raise ConfigError(
            f"job_status_kwargs.{unknown[0]} is not an option;"
            f" valid: {', '.join(sorted(DEFAULT_SCALING))}"
        )
    settings.update(job_status_kwargs)
    if settings["strategy"] is None:
        settings["strategy"] = "none"  # Parsl deprecates the literal None
    if settings["strategy"] not in STRATEGIES:
        raise ConfigError(
            f"job_status_kwargs.strategy {settings['strategy']!r} is not one of"
            f" {', '.join(STRATEGIES)}"
        )
    for key in ("max_idletime", "strategy_period"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"job_status_kwargs.{key} must be a number >= 0, got {value!r}")
        settings[key] = float(value)
    if settings["strategy_period"] == 0:
        raise ConfigError("job_status_kwargs.strategy_period must be more than 0")
    return settings


def worker_launch_cmd(parsl_default: str) -> str:
    """Parsl's worker command with ``process_worker_pool.py`` replaced by this Python.

    Workers then start without anything on PATH: the interpreter that runs the endpoint
    runs them (providers run the command after ``worker_init``, in the same environment on
    a LocalProvider, and wherever the same path is valid on a cluster). Parsl's ``{...}``
    placeholders are kept for it to fill in, so braces in the path are escaped.
    """
    _, _, arguments = parsl_default.partition(" ")
    python = shlex.quote(sys.executable).replace("{", "{{").replace("}", "}}")
    return f"{python} -m {_WORKER_MODULE} {arguments}"


def container_worker_launch_cmd(parsl_default: str, python: str = "python3") -> str:
    """Parsl's worker command as run inside a container image.

    The container's own Python (first on its PATH) runs the worker pool, through
    `endpoint.containers.entry` so that the pool, as the container's PID 1, still stops on
    SIGTERM. Parsl's ``{...}`` placeholders are kept for it to fill in.
    """
    _, _, arguments = parsl_default.partition(" ")
    return f"{python} -m endpoint.containers.entry {_WORKER_MODULE} {arguments}"


def interchange_launch_cmd() -> list[str]:
    return [sys.executable, "-m", _INTERCHANGE_MODULE]
