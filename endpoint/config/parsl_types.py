"""Parsl objects named by ``type`` in a config: providers, launchers, addresses, selectors.

`config.yaml` names Parsl classes the way the official endpoint does (``provider: {type:
SlurmProvider, partition: ..., launcher: {type: SrunLauncher}}``). This module is the one place
that maps those names to Parsl callables, checks the keys against the callable's signature (so a
typo is a config error naming the key, not a ``TypeError`` deep inside Parsl) and the values
against the types Parsl enforces, and builds the objects. Checking builds nothing: only the
engine, when the endpoint starts, calls `build`. Parsl is imported only when a config actually
names one of its types.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import typing
from collections.abc import Callable
from typing import Any, Literal

from endpoint.config.issues import did_you_mean
from endpoint.errors import ConfigError

Kind = Literal["provider", "launcher", "address", "manager_selector"]

_MODULES: dict[str, str] = {
    "provider": "parsl.providers",
    "launcher": "parsl.launchers",
    "address": "parsl.addresses",
    "manager_selector": "parsl.executors.high_throughput.manager_selector",
}

#: Keys inside a spec of one kind that hold a nested spec of another kind.
_NESTED: dict[str, dict[str, Kind]] = {"provider": {"launcher": "launcher"}}

#: Keys old configs carry that Parsl no longer has, with what to do instead.
_GONE: dict[str, str] = {
    "channel": "Parsl removed channels in 2024 (providers run their commands locally); remove"
    " it, or run the endpoint on the scheduler's login node",
    "incluster_config": "no longer an option of KubernetesProvider (it reads the in-cluster"
    " configuration itself when it runs in a pod); remove it",
}

#: Types old configs name that Parsl no longer has.
_GONE_TYPES: dict[str, str] = {
    "CobaltProvider": "Parsl removed CobaltProvider (Cobalt, Theta and Cooley are retired)",
    "AdHocProvider": "Parsl removed AdHocProvider",
}

#: (path inside the spec, message)
SpecError = tuple[tuple[str, ...], str]


def valid_types(kind: Kind) -> list[str]:
    module = importlib.import_module(_MODULES[kind])
    if kind == "address":
        return sorted(n for n in dir(module) if n.startswith("address_by_"))
    if kind == "manager_selector":
        return sorted(n for n in dir(module) if n.endswith("ManagerSelector"))
    return sorted(set(getattr(module, "__all__", [])))


def resolve(kind: Kind, type_name: str) -> Callable[..., Any]:
    """The Parsl callable for ``type_name``; a `ConfigError` listing valid names otherwise."""
    names = valid_types(kind)
    if type_name not in names:
        gone = _GONE_TYPES.get(type_name)
        why = f"{gone}; " if gone else ""
        raise ConfigError(
            f"{type_name!r} is not a valid {kind} type; {why}valid types: {', '.join(names)}"
        )
    module = importlib.import_module(_MODULES[kind])
    found: Callable[..., Any] = getattr(module, type_name)
    return found


def _signature(target: Callable[..., Any]) -> tuple[set[str], set[str], bool]:
    """(accepted keyword names, required names, accepts **kwargs)."""
    if inspect.isclass(target) and target.__init__ is object.__init__:
        return set(), set(), False  # object's (*args, **kwargs) accepts nothing in practice
    func = target.__init__ if inspect.isclass(target) else target
    params = list(inspect.signature(func).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = {
        p.name
        for p in params
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return names, required, any(p.kind == p.VAR_KEYWORD for p in params)


def options(kind: Kind, type_name: str) -> set[str]:
    """The keyword options of a valid ``type_name`` (empty when it is not valid)."""
    try:
        return _signature(resolve(kind, type_name))[0]
    except ConfigError:
        return set()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(minimum: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            return f"must be an integer of at least {minimum}, got {_short(value)}"
        return None

    return check


def _string(value: Any) -> str | None:
    if isinstance(value, str):
        return None
    return f"must be a string, got {type(value).__name__} {_short(value)} (quote it in YAML)"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {_short(value)}"


def _fraction(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
    return None if ok else f"must be a number between 0 and 1, got {_short(value)}"


#: What Parsl assumes of the options its providers and launchers share, most of which no
#: signature states (LocalProvider, PBSProProvider, ... take anything): `max_blocks: -1` or
#: `worker_init: [1, 2]` would otherwise pass and break when a block starts.
_OPTION_RULES: dict[str, Callable[[Any], str | None]] = {
    **dict.fromkeys(("init_blocks", "min_blocks", "max_blocks", "mem_per_node"), _integer(0)),
    **dict.fromkeys(
        (
            "nodes_per_block",
            "cmd_timeout",
            "cpus_per_node",
            "cores_per_node",
            "cores_per_block",
            "gpus_per_node",
            "cores_per_slot",
            "status_batch_size",
            "cmd_chunk_size",
        ),
        _integer(1),
    ),
    "parallelism": _fraction,
    **dict.fromkeys(
        (
            "worker_init",
            "scheduler_options",
            "select_options",
            "account",
            "queue",
            "partition",
            "qos",
            "constraint",
            "project",
            "overrides",
        ),
        _string,
    ),
    **dict.fromkeys(
        (
            "linger",
            "exclusive",
            "bsub_redirection",
            "request_by_nodes",
            "debug",
            "fail_on_any",
            "run_as_non_root",
        ),
        _boolean,
    ),
}


def _non_finite(value: Any) -> bool:
    """Whether ``value`` is or holds .inf or .nan (YAML reads both as floats)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    return False


def _value_problem(target: Callable[..., Any], key: str, value: Any) -> str | None:
    if _non_finite(value):
        return f"must be a finite number, got {_short(value)}"
    # YAML 1.1 reads an unquoted 10:00:00 as the base-60 integer 36000, which Parsl would
    # pass to the scheduler as minutes or seconds: a silent, wrong walltime.
    if key == "walltime" and not isinstance(value, str):
        return (
            f"must be a string like '01:30:00', got the number {value!r} (YAML reads an"
            " unquoted H:MM:SS with a non-zero first digit as a base-60 number; quote it)"
        )
    if problem := _type_problem(target, key, value):
        return problem  # the signature's own types (typeguard) say it first
    rule = _OPTION_RULES.get(key)
    return rule(value) if rule is not None else None


@functools.cache
def _enforced_hints(target: Callable[..., Any]) -> dict[str, Any]:
    """The argument types ``target`` enforces when called: those of a constructor that
    typeguard instruments (SlurmProvider, CondorProvider, ...), else none.

    Checking these while a config is checked catches what building the object would refuse,
    without building it (which may need the cluster: a scheduler, an interface, an SDK).
    """
    func = target.__init__ if inspect.isclass(target) else target
    code = getattr(func, "__code__", None)
    # typeguard's @typechecked rewrites the function to call into typeguard; plain ones
    # (LocalProvider, every launcher) take whatever they are given.
    if code is None or "typeguard" not in code.co_names:
        return {}
    try:
        return typing.get_type_hints(func)
    except Exception:  # a hint naming something this Parsl cannot resolve: check nothing
        return {}


def _type_problem(target: Callable[..., Any], key: str, value: Any) -> str | None:
    import typeguard

    hint = _enforced_hints(target).get(key)
    if hint is None:
        return None
    try:
        typeguard.check_type(value, hint)
    except typeguard.TypeCheckError as e:
        return f"wrong type: {e}"
    return None


def check_spec(kind: Kind, spec: Any) -> list[SpecError]:
    """Every problem with ``spec`` (unknown type or key, missing required key), with paths."""
    if isinstance(spec, str) and kind == "address":
        return []
    if not isinstance(spec, dict):
        return [((), f"must be a mapping with a 'type' key, got {type(spec).__name__}")]
    type_name = spec.get("type")
    if not isinstance(type_name, str):
        return [(("type",), f"missing the {kind} 'type' (e.g. {valid_types(kind)[0]})")]
    try:
        target = resolve(kind, type_name)
    except ConfigError as e:
        return [(("type",), str(e))]
    names, required, open_kwargs = _signature(target)
    errors: list[SpecError] = []
    nested = _NESTED.get(kind, {})
    for key, value in spec.items():
        if key == "type" or value is None:
            continue
        if key in nested:
            errors += [((key, *p), m) for p, m in check_spec(nested[key], value)]
        elif key not in names and not open_kwargs:
            hint = _GONE.get(key) or f"unknown option of {type_name}{did_you_mean(key, names)}"
            errors.append(((key,), hint))
        elif problem := _value_problem(target, key, value):
            errors.append(((key,), problem))
    present = {k for k, v in spec.items() if v is not None}
    errors += [((key,), f"required by {type_name}") for key in sorted(required - present)]
    return errors


def build(kind: Kind, spec: Any) -> Any:
    """Instantiate ``spec`` (a checked mapping); keys set to None are dropped, as upstream."""
    if isinstance(spec, str) and kind == "address":
        return spec
    problems = check_spec(kind, spec)
    if problems:
        raise ConfigError("; ".join(f"{kind}.{'.'.join(p) or 'type'}: {m}" for p, m in problems))
    kwargs = {k: v for k, v in spec.items() if k != "type" and v is not None}
    for key, sub_kind in _NESTED.get(kind, {}).items():
        if key in kwargs:
            kwargs[key] = build(sub_kind, kwargs[key])
    target = resolve(kind, spec["type"])
    try:
        return target(**kwargs)
    except Exception as e:
        # Parsl raises its own errors (OptionalModuleMissing for a cloud SDK that is not
        # installed, ValueError for a bad value): report them as config errors that name the type.
        raise ConfigError(f"{kind} {spec['type']}: {e}") from e
