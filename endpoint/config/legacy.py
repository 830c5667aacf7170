"""Legacy ``config.py`` files (funcX 0.x/1.x, Globus Compute 2.x-4.x), read without those packages.

A ``config.py`` builds ``config = Config(...)`` from classes of ``globus_compute_endpoint`` or
``funcx_endpoint`` and Parsl. We never import those packages (we are not them, and they are not
installed). Instead the file runs with an ``__import__`` that hands it stand-ins: each class
or function it calls records its name and keyword arguments. The recorded tree is then turned
into the same document a ``config.yaml`` would give, and validated by the same models, so a
legacy file and its YAML translation succeed or fail alike. Errors point at the ``config.py``
line of the offending keyword.

Running the file executes the user's own code in this process; the official endpoint does the
same (it imports the file).
"""

from __future__ import annotations

import ast
import builtins
import inspect
import logging
import sys
import traceback
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from endpoint.config import parsl_types
from endpoint.config.loader import Path_, validate
from endpoint.config.model import EndpointConfig, ManagerConfig
from endpoint.errors import ConfigError

log = logging.getLogger(__name__)

_GC_PACKAGES = ("globus_compute_endpoint", "funcx_endpoint")

#: Names from the Globus Compute / funcX packages: (kind, what we record them as).
_GC_NAMES: dict[str, tuple[str, str]] = {
    "Config": ("config", "user"),
    "UserEndpointConfig": ("config", "user"),
    "ManagerEndpointConfig": ("config", "manager"),
    "CoreEndpointConfig": ("config", "manager"),
    "GlobusComputeEngine": ("engine", "GlobusComputeEngine"),
    "GlobusMPIEngine": ("engine", "GlobusMPIEngine"),
    "ThreadPoolEngine": ("engine", "ThreadPoolEngine"),
    "ProcessPoolEngine": ("engine", "ProcessPoolEngine"),
    # funcX's own HighThroughputExecutor and the 2.x engine over it became GlobusComputeEngine.
    "HighThroughputExecutor": ("engine", "GlobusComputeEngine"),
    "HighThroughputEngine": ("engine", "GlobusComputeEngine"),
    "SimpleStrategy": ("strategy", "SimpleStrategy"),
    "KubeSimpleStrategy": ("strategy", "KubeSimpleStrategy"),
    "PamConfiguration": ("mapping", "pam"),
    "PathConfiguration": ("mapping", "paths"),
}

#: Parsl executors a config may name, and the engine each becomes.
_PARSL_EXECUTORS = {
    "HighThroughputExecutor": "GlobusComputeEngine",
    "MPIExecutor": "GlobusMPIEngine",
}

#: Parsl subpackages we stand in for, and the kind of object each provides.
_PARSL_FAMILIES = {
    "parsl.providers": "provider",
    "parsl.launchers": "launcher",
    "parsl.addresses": "address",
    "parsl.channels": "channel",
    "parsl.executors": "executor",
}


class _Call:
    """One recorded call in config.py: what was called, its keywords, and where."""

    def __init__(self, kind: str, name: str, kwargs: dict[str, Any], site: tuple[int, int] | None):
        self.kind = kind
        self.name = name
        self.kwargs = kwargs
        self.site = site

    def __repr__(self) -> str:
        return f"{self.name}(...)"


def _call_site(filename: str) -> tuple[int, int] | None:
    """(line, column) of the call expression in config.py that is running now, if any."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename != filename:
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return None
    try:
        line, _, col, _ = list(frame.f_code.co_positions())[frame.f_lasti // 2]
    except (IndexError, ValueError):
        return (frame.f_lineno, -1)
    return (line, col) if line is not None and col is not None else (frame.f_lineno, -1)


class _Recorder:
    """Stands in for a class or function: calling it records a `_Call`."""

    def __init__(self, kind: str, name: str, filename: str, real: Callable[..., Any] | None):
        self.kind, self.name, self.filename, self.real = kind, name, filename, real

    def __call__(self, *args: Any, **kwargs: Any) -> _Call:
        if args:
            kwargs = self._bind(args, kwargs)
        return _Call(self.kind, self.name, kwargs, _call_site(self.filename))

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        # Parsl callables are real, so positional arguments can be named from their
        # signature (address_by_interface("ib0")); ours always took keywords.
        if self.real is None:
            raise ConfigError(f"{self.name}() takes keyword arguments only")
        bound = inspect.signature(self.real).bind_partial(*args, **kwargs)
        return dict(bound.arguments)


class _Shim(types.ModuleType):
    """A stand-in module: attributes resolve to recorders or to further stand-ins."""

    def __init__(self, name: str, resolve: Callable[[_Shim, str], Any]) -> None:
        super().__init__(name)
        self._resolve = resolve

    def __getattr__(self, attr: str) -> Any:
        # Dunder lookups (e.g. by copy or inspect) are not names a config imports; only the
        # parsl stand-in forwards them, so `parsl.__version__` still works.
        if attr.startswith("__") and self.__name__ != "parsl":
            raise AttributeError(attr)
        return self._resolve(self, attr)


class _Shims:
    """Builds the stand-in modules for one config.py run."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self._modules: dict[str, _Shim] = {}

    def handles(self, name: str) -> bool:
        top = name.partition(".")[0]
        return top in _GC_PACKAGES or name == "parsl" or name.startswith(tuple(_PARSL_FAMILIES))

    def module(self, name: str) -> _Shim:
        if name not in self._modules:
            self._modules[name] = _Shim(name, self._resolve)
        return self._modules[name]

    def _resolve(self, module: _Shim, attr: str) -> Any:
        name = module.__name__
        if name.partition(".")[0] in _GC_PACKAGES:
            return self._gc_attr(name, attr)
        if name == "parsl":
            return self._parsl_attr(attr)
        family = next(f for f in _PARSL_FAMILIES if name.startswith(f))
        return self._family_attr(name, _PARSL_FAMILIES[family], attr)

    def _gc_attr(self, name: str, attr: str) -> Any:
        if attr == "ManagerEndpointConfig":
            # Renamed in 4.18 ("manager endpoint" became "core endpoint"); both still load.
            log.warning(
                "%s: ManagerEndpointConfig is deprecated; use CoreEndpointConfig", self.filename
            )
        if attr in _GC_NAMES:
            kind, recorded = _GC_NAMES[attr]
            return _Recorder(kind, recorded, self.filename, None)
        if attr.islower():
            return self.module(f"{name}.{attr}")
        raise AttributeError(f"{attr} (from {name}) has no equivalent in this endpoint")

    def _parsl_attr(self, attr: str) -> Any:
        family = f"parsl.{attr}"
        if family in _PARSL_FAMILIES:
            return self.module(family)
        if attr in _PARSL_EXECUTORS:
            return self._family_attr("parsl.executors", "executor", attr)
        import parsl

        return getattr(parsl, attr)

    def _family_attr(self, name: str, kind: str, attr: str) -> Any:
        if attr.islower() and not attr.startswith("address_by_"):
            return self.module(f"{name}.{attr}")
        if kind == "executor":
            return self._executor(attr)
        if kind == "channel":
            return _Recorder("channel", attr, self.filename, None)
        real = None
        try:
            real = parsl_types.resolve(kind, attr)  # type: ignore[arg-type]
        except ConfigError as e:
            if not attr.endswith("Provider"):
                raise AttributeError(str(e)) from None
        return _Recorder(kind, attr, self.filename, real)

    def explain(self, module: str | None) -> str:
        """What a failed ``from MODULE import X`` could have imported instead."""
        if not module or not self.handles(module):
            return ""
        if module.partition(".")[0] in _GC_PACKAGES:
            return f"; known names: {', '.join(sorted(_GC_NAMES))}"
        family = next((f for f in _PARSL_FAMILIES if module.startswith(f)), None)
        kind = _PARSL_FAMILIES.get(family or "")
        if kind in ("provider", "launcher", "address"):
            return f"; valid: {', '.join(parsl_types.valid_types(kind))}"  # type: ignore[arg-type]
        return ""

    def _executor(self, attr: str) -> Any:
        if attr in _PARSL_EXECUTORS:
            return _Recorder("engine", _PARSL_EXECUTORS[attr], self.filename, None)
        if attr.endswith("ManagerSelector"):
            real = parsl_types.resolve("manager_selector", attr)
            return _Recorder("manager_selector", attr, self.filename, real)
        raise AttributeError(
            f"parsl's {attr} cannot run Compute tasks; use one of the engines"
            " (ThreadPoolEngine, ProcessPoolEngine, GlobusComputeEngine, GlobusMPIEngine)"
        )


def _importer(shims: _Shims) -> Callable[..., Any]:
    real_import = builtins.__import__

    def shim_import(
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> Any:
        if level == 0 and shims.handles(name):
            if fromlist:
                return shims.module(name)
            return shims.module(name.partition(".")[0])
        return real_import(name, globals, locals, fromlist, level)

    return shim_import


def _failure_line(err: BaseException, filename: str) -> str:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == filename]
    return f" (line {frames[-1].lineno})" if frames else ""


def run_file(path: Path, text: str) -> Any:
    """Execute config.py with stand-ins and return its module-level ``config``."""
    filename = str(path)
    try:
        code = compile(text, filename, "exec")
    except SyntaxError as e:
        raise ConfigError(f"{filename} (line {e.lineno}): invalid Python: {e.msg}") from None
    shims = _Shims(filename)
    namespace: dict[str, Any] = {
        "__name__": "endpoint_config",
        "__file__": filename,
        "__builtins__": {**vars(builtins), "__import__": _importer(shims)},
    }
    try:
        exec(code, namespace)
    except ConfigError as e:
        raise ConfigError(f"{filename}{_failure_line(e, filename)}: {e}") from None
    except ImportError as e:
        reason = str(e).replace(" (unknown location)", "") + shims.explain(e.name)
        raise ConfigError(f"{filename}{_failure_line(e, filename)}: {reason}") from None
    except Exception as e:
        where = _failure_line(e, filename)
        raise ConfigError(f"{filename}{where}: {type(e).__name__}: {e}") from None
    if "config" not in namespace:
        raise ConfigError(f"{filename}: defines no `config` (expected config = Config(...))")
    return namespace["config"]


class _Converter:
    """Turns recorded calls into a config document and the line of each key path."""

    def __init__(self, filename: str, tree: ast.Module) -> None:
        self.filename = filename
        self.lines: dict[Path_, int] = {}
        self._calls = {
            (node.lineno, node.col_offset): node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
        }

    def document(self, config: Any) -> dict[str, Any]:
        if not isinstance(config, _Call) or config.kind != "config":
            raise ConfigError(
                f"{self.filename}: `config` must be Config(...), UserEndpointConfig(...) or"
                f" CoreEndpointConfig(...) (ManagerEndpointConfig before 4.18), got"
                f" {type(config).__name__}"
            )
        kwargs = dict(config.kwargs)
        executors = kwargs.pop("executors", None)
        if executors is not None:
            kwargs["engine"] = self._single_executor(executors, kwargs)
        elif config.name == "user" and "engine" not in kwargs:
            kwargs["engine"] = _Call("engine", "GlobusComputeEngine", {}, config.site)
        self._note_lines(config, ())
        if executors is not None:
            self.lines[("engine",)] = self.lines.pop(("executors",), 0)
        return self._mapping(kwargs, ())

    def _error(self, path: Path_, message: str) -> ConfigError:
        line = self.lines.get(path)
        where = f" (line {line})" if line else ""
        return ConfigError(f"{self.filename}: {'.'.join(path)}{where}: {message}")

    def _single_executor(self, executors: Any, kwargs: dict[str, Any]) -> Any:
        if "engine" in kwargs:
            raise ConfigError(f"{self.filename}: give either executors= or engine=, not both")
        if not isinstance(executors, list | tuple) or len(executors) != 1:
            raise ConfigError(
                f"{self.filename}: executors= must hold exactly one executor; the endpoint runs"
                " one engine (use engine=GlobusComputeEngine(...))"
            )
        return executors[0]

    def _note_lines(self, call: _Call, path: Path_) -> None:
        if call.site is None:
            return
        if path:
            self.lines.setdefault(path, call.site[0])
        node = self._calls.get(call.site)
        if node is not None:
            for kw in node.keywords:
                if kw.arg is not None:
                    self.lines[(*path, kw.arg)] = kw.value.lineno

    def _mapping(self, kwargs: dict[str, Any], path: Path_) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in kwargs.items():
            if isinstance(value, _Call) and value.kind == "channel":
                self._channel(value, (*path, key))
                continue
            out[key] = self._plain(value, (*path, key))
        return out

    def _channel(self, call: _Call, path: Path_) -> None:
        # Parsl dropped channels; LocalChannel was the default, so it can simply go.
        if call.name != "LocalChannel":
            raise self._error(
                path,
                f"Parsl removed channels; {call.name} has no replacement (run the endpoint"
                " on the scheduler's login node instead)",
            )
        log.warning(
            "%s: ignoring %s=LocalChannel(): Parsl no longer has channels",
            self.filename,
            ".".join(path),
        )

    def _plain(self, value: Any, path: Path_) -> Any:
        if isinstance(value, _Call):
            return self._call(value, path)
        if isinstance(value, list | tuple):
            return [self._plain(item, (*path, str(i))) for i, item in enumerate(value)]
        if isinstance(value, dict):
            return {str(k): self._plain(v, (*path, str(k))) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        if value is None or isinstance(value, str | int | float | bool):
            return value
        raise self._error(
            path,
            f"a Python {type(value).__name__} cannot be expressed in configuration; use plain"
            " values (strings, numbers, lists, mappings)",
        )

    def _call(self, call: _Call, path: Path_) -> dict[str, Any]:
        self._note_lines(call, path)
        kwargs = dict(call.kwargs)
        if call.kind == "engine" and isinstance(kwargs.get("executor"), _Call):
            kwargs = self._merge_executor(kwargs, path)
        body = self._mapping(kwargs, path)
        if call.kind == "mapping":
            return body
        return {"type": call.name, **body}

    def _merge_executor(self, kwargs: dict[str, Any], path: Path_) -> dict[str, Any]:
        # `GlobusComputeEngine(executor=HighThroughputExecutor(...))`: the executor's options
        # are engine options in a config file.
        executor: _Call = kwargs.pop("executor")
        self._note_lines(executor, path)
        clash = sorted(set(executor.kwargs) & set(kwargs))
        if clash:
            raise self._error(path, f"{', '.join(clash)} set on both the engine and its executor")
        return {**executor.kwargs, **kwargs}


def load_legacy(path: Path) -> tuple[EndpointConfig | ManagerConfig, str]:
    """Load a legacy config.py as the equivalent config.yaml would load."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    message = (
        f"{path}: config.py is deprecated; move its settings to config.yaml"
        " (`check-config` prints the equivalent YAML)"
    )
    log.warning("%s", message)
    warnings.warn(message, DeprecationWarning, stacklevel=2)
    config = run_file(path, text)
    converter = _Converter(str(path), ast.parse(text))
    document = converter.document(config)
    cfg = validate(document, source=str(path), lines=converter.lines, base_dir=path.parent)
    return cfg, text
