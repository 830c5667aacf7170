"""Read ``config.yaml`` (or a legacy ``config.py``) into a config model.

Every error names the file, the key path and, when the key appears in the file, its line:
``config.yaml: invalid configuration:\\n  engine.provider.launcher.bogus (line 7): ...``.
All problems found are reported together, so one round of edits can fix them all.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from endpoint.config import retired
from endpoint.config.engines import EngineConfig
from endpoint.config.htex import PASSTHROUGH, GlobusComputeEngineConfig, passthrough_keys
from endpoint.config.issues import ISSUES, did_you_mean
from endpoint.config.model import ENGINE_MODELS, EndpointConfig, ManagerConfig, document_kind
from endpoint.errors import ConfigError

log = logging.getLogger(__name__)

YAML_FILE = "config.yaml"
PYTHON_FILE = "config.py"

Path_ = tuple[str, ...]
AnyConfig = EndpointConfig | ManagerConfig

#: Bounds on a document's node graph with its aliases expanded: a real config has a few
#: hundred nodes, while a "billion laughs" file of nested aliases would take minutes to check.
MAX_NODES = 100_000
MAX_DEPTH = 100


# ---- YAML and line numbers ---------------------------------------------------------------


def _walk(node: yaml.Node, path: Path_) -> Iterator[tuple[Path_, yaml.Node]]:
    """Every (key path, key-or-item node) below ``node``, in document order."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, str(key.value))
            yield sub, key
            yield from _walk(value, sub)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            sub = (*path, str(index))
            yield sub, item
            yield from _walk(item, sub)


def key_lines(root: yaml.Node | None) -> tuple[dict[Path_, int], list[str]]:
    """Each key path's 1-based line, and the duplicate keys (YAML would keep the last)."""
    lines: dict[Path_, int] = {}
    duplicates: list[str] = []
    if root is None:
        return lines, duplicates
    for path, node in _walk(root, ()):
        line = node.start_mark.line + 1
        if path in lines and isinstance(node, yaml.ScalarNode) and not path[-1].isdigit():
            duplicates.append(
                f"{'.'.join(path)} (line {line}): duplicate key, first at line {lines[path]}"
            )
            continue
        lines[path] = line
    return lines, duplicates


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_shape(root: yaml.Node, source: str) -> None:
    """Refuse alias cycles, alias bombs and absurd nesting before anything walks the graph.

    Iterative (no recursion to exhaust) and linear in the composed graph: each node's
    expanded size is computed once.
    """
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, leaving = stack.pop()
        key = id(node)
        if leaving:
            ancestors.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[key] > MAX_NODES:
                raise ConfigError(
                    f"{source}: its YAML aliases expand to more than {MAX_NODES} values"
                    f" (from line {node.start_mark.line + 1})"
                )
            continue
        if key in sizes:
            continue
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"{source}: nested more than {MAX_DEPTH} levels deep at line"
                f" {node.start_mark.line + 1}"
            )
        ancestors.add(key)
        stack.append((node, depth, True))
        for child in _children(node):
            if id(child) in ancestors:
                raise ConfigError(
                    f"{source}: the YAML alias at line {child.start_mark.line + 1} refers to"
                    " a value that contains it"
                )
            stack.append((child, depth + 1, False))


def _yaml_error(err: yaml.YAMLError, source: str) -> ConfigError:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    hint = ""
    if "\\t" in problem or "\t" in problem:
        hint = " (YAML does not allow tabs for indentation; use spaces)"
    return ConfigError(f"{source}: not valid YAML{where}: {problem}{hint}")


def parse_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[Path_, int]]:
    """The top-level mapping of ``text`` and the line of each key in it."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            check_shape(root, source)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _yaml_error(e, source) from e
    except RecursionError as e:  # PyYAML's composer recurses once per nesting level
        raise ConfigError(f"{source}: nested too deeply to parse") from e
    lines, duplicates = key_lines(root)
    if duplicates:
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(duplicates))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    return data, lines


# ---- validation errors -------------------------------------------------------------------


def _clean(loc: Path_) -> Path_:
    """The path as the user wrote it: without union tags and the passthrough bucket."""
    if len(loc) > 1 and loc[0] == "engine" and loc[1] in ENGINE_MODELS:
        loc = (loc[0], *loc[2:])
    # The bucket is invisible in YAML, unless someone wrote the key itself.
    return tuple(part for i, part in enumerate(loc) if part != PASSTHROUGH or i == len(loc) - 1)


def _model_at(kind: type[BaseModel], loc: Path_) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc`` (a raw pydantic loc)."""
    current: type[BaseModel] | None = kind
    parts = list(loc)
    while parts and current is not None:
        part = parts.pop(0)
        if part == "engine" and parts and parts[0] in ENGINE_MODELS:
            current = ENGINE_MODELS[parts.pop(0)]
            continue
        field = current.model_fields.get(part)
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
        else:
            current = None
    return current


def _unknown_key(kind: type[AnyConfig], loc: Path_) -> str:
    key = loc[-1]
    owner = _model_at(kind, loc[:-1])
    if len(loc) == 1:
        if reason := retired.top_level(key):
            return reason
        if kind is EndpointConfig and key in ManagerConfig.model_fields:
            return retired.MANAGER_ONLY
        if kind is ManagerConfig and key in EndpointConfig.model_fields:
            return retired.USER_ONLY
    elif loc[0] == "engine" and len(loc) == 3:
        if reason := retired.engine_key(key):
            return reason
        if key in GlobusComputeEngineConfig.model_fields or key in passthrough_keys(
            "HighThroughputExecutor"
        ):
            return retired.HTEX_ONLY_HINT.format(engine=loc[1])
    known = set(owner.model_fields) if owner else set()
    return "unknown key" + did_you_mean(key, known)


def _message(item: Any, kind: type[AnyConfig], loc: Path_) -> str:
    if item["type"] == "extra_forbidden":
        return _unknown_key(kind, loc)
    if item["type"] == "missing":
        return "required"
    return str(item["msg"]).removeprefix("Value error, ")


def _problems(err: ValidationError, kind: type[AnyConfig]) -> Iterator[tuple[Path_, str]]:
    for item in err.errors():
        loc = tuple(str(p) for p in item["loc"])
        if item["type"] == ISSUES:
            for sub, msg in item["ctx"]["issues"]:
                yield _clean((*loc, *sub)), msg
        else:
            yield _clean(loc), _message(item, kind, loc)


def describe_errors(
    err: ValidationError, kind: type[AnyConfig], lines: dict[Path_, int], source: str
) -> str:
    found: dict[str, int] = {}
    for path, msg in _problems(err, kind):
        line = next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), 0)
        where = f" (line {line})" if line else ""
        found.setdefault(f"{'.'.join(path) or '<top level>'}{where}: {msg}", line)
    # In file order, so the list reads like the file.
    parts = sorted(found, key=lambda entry: found[entry] or sys.maxsize)
    return f"{source}: invalid configuration:\n  " + "\n  ".join(parts)


# ---- public entry points -----------------------------------------------------------------


def validate(
    data: dict[str, Any],
    *,
    source: str,
    lines: dict[Path_, int] | None = None,
    base_dir: Path | None = None,
) -> AnyConfig:
    """Validate a parsed document as a user endpoint or a manager config (by ``engine``)."""
    kind = document_kind(data)
    try:
        return kind.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        raise ConfigError(describe_errors(e, kind, lines or {}, source)) from None


def load_engine(spec: dict[str, Any], source: str = "engine") -> EngineConfig:
    """Validate an ``engine:`` mapping alone, exactly as inside a config file.

    For engines described in Python (tests, benchmarks): the same model, defaults and
    messages (``engine.max_workers: ...``) as a file's ``engine:`` block.
    """
    cfg = validate({"engine": spec}, source=source)
    assert isinstance(cfg, EndpointConfig)  # a document with engine: is a user endpoint
    return cfg.engine


def load_config_text(
    text: str, source: str = YAML_FILE, *, base_dir: Path | None = None
) -> AnyConfig:
    """Parse YAML text; relative paths in it are taken relative to ``base_dir`` (or cwd)."""
    data, lines = parse_yaml(text, source)
    return validate(data, source=source, lines=lines, base_dir=base_dir)
