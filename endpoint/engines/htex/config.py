"""Turning GlobusComputeEngine's validated model into a Parsl executor.

The model (`endpoint.config.htex`) has already checked every option, by name and type, and
holds the defaults. What is left here is building: ``{type: ...}`` mappings become Parsl
providers, launchers, address functions and manager selectors, and the commands that start
workers and the interchange are pointed at this Python. Building can still fail for reasons
only this host knows (an interface that is not here, a cloud SDK that is not installed): those
are `ConfigError`s naming the key, instead of a ``TypeError`` from inside Parsl.

Parsl is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib.metadata
import shlex
import sys
from typing import Any

from endpoint.errors import ConfigError

_WORKER_MODULE = "parsl.executors.high_throughput.process_worker_pool"
_LAUNCH_MODULE = "endpoint.worker.launch"
_INTERCHANGE_MODULE = "parsl.executors.high_throughput.interchange"


def build_provider(spec: dict[str, Any]) -> Any:
    """A Parsl provider from the model's ``{type: SlurmProvider, ...}`` mapping."""
    from endpoint.config.parsl_types import build

    return build("provider", spec)


def resolve_address(address: str | dict[str, Any] | None, provider: Any) -> str | None:
    """The interchange address workers connect to.

    With a LocalProvider the workers run on this host, so loopback always reaches the
    interchange; Parsl's default would listen on, and have workers probe, every interface
    (slower to connect, and reachable from the network). Other providers keep Parsl's
    default (all addresses) unless the config names one. An address function (e.g.
    ``address_by_interface``) runs here, on the host that runs the endpoint.
    """
    from parsl.providers import LocalProvider

    if address is None:
        return "127.0.0.1" if isinstance(provider, LocalProvider) else None
    if isinstance(address, str):
        return address
    from endpoint.config.parsl_types import build

    found = build("address", address)  # e.g. address_by_interface on a missing interface
    if not isinstance(found, str) or not found:
        raise ConfigError(f"address ({address.get('type')}) found no address")
    return found


def executor_options(options: dict[str, Any]) -> dict[str, Any]:
    """The model's pass-through options as the executor's constructor takes them."""
    converted = dict(options)
    if "manager_selector" in converted:
        from endpoint.config.parsl_types import build

        converted["manager_selector"] = build("manager_selector", converted["manager_selector"])
    return converted


def make_executor(executor_cls: type, **kwargs: Any) -> Any:
    """Build the executor, turning Parsl's type and value checks into ConfigErrors."""
    try:
        return executor_cls(**kwargs)
    except Exception as e:  # typeguard's TypeCheckError, ValueError, TypeError, assert
        # typeguard's messages name the argument, e.g. 'argument "heartbeat_period" ...'
        name = getattr(executor_cls, "parsl_name", executor_cls.__name__)
        raise ConfigError(f"invalid {name} option: {e}") from e


def worker_launch_cmd(parsl_default: str, worker_init: str = "") -> str:
    """Parsl's worker command, run by this endpoint's Python or by the environment that
    ``worker_init`` sets up.

    Without ``worker_init``, workers start without anything on PATH: the interpreter that runs
    the endpoint runs them (providers run the command in the same environment on a
    LocalProvider, and wherever the same path is valid on a cluster). With it, this Python
    starts `endpoint.worker.launch`, which lets the environment ``worker_init`` left win, as
    with the official endpoint (see there). The command has no shell variables: launchers
    such as SrunLauncher write it through an unquoted heredoc, which would expand them.
    Parsl's ``{...}`` placeholders are kept for it to fill in, so braces in paths are escaped.
    """
    _, _, arguments = parsl_default.partition(" ")
    own = shlex.quote(sys.executable).replace("{", "{{").replace("}", "}}")
    if not worker_init.strip():
        return f"{own} -m {_WORKER_MODULE} {arguments}"
    versions = " ".join(shlex.quote(v) for v in expected_versions())
    return f"{own} -m {_LAUNCH_MODULE} {versions} {arguments}"


def expected_versions() -> tuple[str, str, str]:
    """What a worker's environment must match: Python minor, Parsl, dill."""
    return (
        f"{sys.version_info.major}.{sys.version_info.minor}",
        importlib.metadata.version("parsl"),
        importlib.metadata.version("dill"),
    )


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
