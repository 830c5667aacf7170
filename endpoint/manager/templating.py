"""User endpoint configs rendered from a manager's Jinja2 template (features.md §2.6).

The submitter's `user_endpoint_config` fills `user_config_template.yaml.j2`. The submitter is
not trusted with the manager's YAML, so:

* the options are checked against `user_config_schema.json` (when there is one) and may not
  use the reserved names (`_GC`, `parent_config`, `user_runtime`, `mapped_identity`);
* every string the submitter sent reaches the template as its JSON encoding, quotes included
  (None as ``null``), so a value can never end a YAML scalar or start a new key: templates
  compare against ``'"text"'``, exactly as with the official endpoint;
* a list or mapping renders (``{{ value }}``) as JSON, a YAML flow collection, never as
  Python's repr, whose quotes YAML does not share (issue 13: a crafted list closed the flow
  mapping around it and added provider keys); its items are escaped like any value for loops.
  The JSON keeps every character as it is (an emoji does not become a surrogate pair, which
  YAML would read as two lone surrogates) except those YAML would not take literally, which
  are escaped; lone surrogates and non-finite numbers are refused;
* `|shell_escape` shell-quotes a value for a shell snippet. Its output is meant to be a whole
  YAML value (YAML then strips the JSON quotes and the shell sees one quoted word). Embedded
  in a longer line the JSON quotes stay and the shell would expand ``$`` and backticks inside
  them, so a value containing those is refused there instead of rendered;
* rendering is sandboxed (no attribute access to Python internals) with strict undefined
  variables, so a missing option is an error naming it, not an empty string.
* `user_python_environment(_GC.user_runtime, requirements, worker_init)` gives the default
  template's ``worker_init``: the submitter's Python environment (`userenv`), their values
  packed into one base64 word rather than spliced into shell text.

The result must be a user endpoint config (it has ``engine``) and may not set
``high_assurance`` (that is the manager's to decide).
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import logging
import math
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
import yaml
from jinja2.sandbox import SandboxedEnvironment

from endpoint.config import EndpointConfig
from endpoint.config.rendered import validate_rendered
from endpoint.errors import TemplateError, UserEnvError, UserOptionsInvalid
from endpoint.manager import userenv

log = logging.getLogger(__name__)

TEMPLATE_FILE = "user_config_template.yaml.j2"
SCHEMA_FILE = "user_config_schema.json"
RESERVED = ("_GC", "parent_config", "user_runtime", "mapped_identity")
#: The bare reserved names still work (as upstream) but `_GC.<name>` is the spelling to use.
_BARE_RESERVED = re.compile(r"(?<![\w.])(parent_config|user_runtime|mapped_identity)\b")
#: Keys of nested option mappings are emitted as they are (a template may loop over them),
#: so they are held to characters that cannot change YAML structure.
_SAFE_KEY = re.compile(r"^[\w.\-/+@]{1,128}$")
#: Inside the double quotes an embedded `|shell_escape` value keeps, a shell still expands these.
_SHELL_ACTIVE = re.compile(r"[$`]")
#: Bigger renders are refused: the config travels to the user endpoint through a pipe.
MAX_RENDERED_BYTES = 256 * 1024
#: Characters JSON leaves literal but YAML would not read back as themselves: C1 controls
#: and DEL (not printable for YAML), NEL, LS and PS (YAML line breaks), BOM and non-characters.
_YAML_LITERAL_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


@dataclass(frozen=True)
class TemplateSource:
    """A template and its optional JSON schema, read (as the manager) before any rendering."""

    text: str
    path: Path | None = None
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Rendered:
    text: str
    config: EndpointConfig

    @property
    def config_hash(self) -> str:
        return config_hash(self.text)


def config_hash(text: str) -> str:
    """Short, stable id of a rendered config: equal texts run in one user endpoint."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- reading the files --------------------------------------------------------------------


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise TemplateError(f"cannot read the {what} {path}: {e.strerror}") from e


def load_schema_text(text: str, source: str) -> dict[str, Any]:
    try:
        schema = json.loads(text)
    except ValueError as e:
        raise TemplateError(f"{source}: not valid JSON: {e}") from e
    if not isinstance(schema, dict):
        raise TemplateError(f"{source}: a JSON schema must be an object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise TemplateError(f"{source}: not a valid JSON schema: {e.message}") from e
    return schema


def load_source(template_path: Path, schema_path: Path | None) -> TemplateSource:
    """The template (falling back from ``.j2`` to ``.yaml`` as upstream) and its schema."""
    if not template_path.exists() and template_path.suffix == ".j2":
        plain = template_path.with_suffix("")
        template_path = plain if plain.exists() else template_path
    text = _read(template_path, "user config template")
    schema = None
    if schema_path is not None and schema_path.exists():
        schema = load_schema_text(_read(schema_path, "user config schema"), str(schema_path))
    return TemplateSource(text, template_path, schema)


def source_for(
    ep_dir: Path, template_path: Path | None, schema_path: Path | None
) -> TemplateSource:
    """A manager's template and schema: the configured paths, else the files in its dir."""
    return load_source(template_path or ep_dir / TEMPLATE_FILE, schema_path or ep_dir / SCHEMA_FILE)


# ---- the submitter's options --------------------------------------------------------------


def check_options(options: dict[str, Any], schema: dict[str, Any] | None) -> None:
    """Reserved names, then the admin's schema; UserOptionsInvalid says what is wrong."""
    used = [name for name in RESERVED if name in options]
    if used:
        raise UserOptionsInvalid(
            f"user_endpoint_config: {', '.join(used)} is reserved and cannot be set by a user"
        )
    if schema is None:
        return
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(options))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "<top level>"
        raise UserOptionsInvalid(
            f"user_endpoint_config does not match the endpoint's schema: {where}: {error.message}"
        )


def yaml_json(value: Any) -> str:
    """``value`` as JSON that YAML reads back unchanged (a flow collection or scalar)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return _YAML_LITERAL_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class JsonList(list[Any]):
    """A submitter's list in a template: escaped items, rendered whole as JSON."""

    def __init__(self, items: list[Any], text: str) -> None:
        super().__init__(items)
        self.text = text

    def __str__(self) -> str:
        return self.text


class JsonDict(dict[str, Any]):
    """A submitter's mapping in a template: escaped values, rendered whole as JSON."""

    def __init__(self, items: dict[str, Any], text: str) -> None:
        super().__init__(items)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _check_scalar(data: Any, path: str) -> None:
    if isinstance(data, str):
        try:
            data.encode()
        except UnicodeEncodeError as e:
            raise UserOptionsInvalid(
                f"user_endpoint_config: {path or 'value'} is not valid Unicode"
                f" (a lone surrogate at character {e.start})"
            ) from None
    elif isinstance(data, float) and not math.isfinite(data):
        raise UserOptionsInvalid(f"user_endpoint_config: {path or 'value'} must be a finite number")


def escape_values(data: Any, path: str = "") -> Any:
    """The options as the template sees them: strings JSON-encoded, None as ``null``, lists
    and mappings of escaped values that render as JSON."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if path and not (isinstance(key, str) and _SAFE_KEY.match(key)):
                raise UserOptionsInvalid(
                    f"user_endpoint_config: key {key!r} under {path} may only use letters, "
                    "digits and _ . - / + @"
                )
            _check_scalar(key, f"{path} key" if path else "a key")
            out[key] = escape_values(value, f"{path}.{key}" if path else str(key))
        return JsonDict(out, yaml_json(data))
    if isinstance(data, list):
        items = [escape_values(v, f"{path}[{i}]") for i, v in enumerate(data)]
        return JsonList(items, yaml_json(data))
    _check_scalar(data, path)
    if isinstance(data, str):
        return yaml_json(data)
    if data is None:
        return "null"
    if isinstance(data, int | float):  # bool is an int: it renders as YAML true/false
        return data
    raise UserOptionsInvalid(
        f"user_endpoint_config: {path or 'value'} has unsupported type {type(data).__name__}"
    )


# ---- rendering ----------------------------------------------------------------------------


#: The `|shell_escape` outputs of the render in progress (rendering is synchronous, so a
#: context variable scopes them to one `render_text` call even with threads around).
_EMITTED: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar(
    "shell_escapes", default=None
)


def shell_escape(value: Any) -> Any:
    """The `|shell_escape` filter: a submitter's value as one shell word, JSON-quoted."""
    if not isinstance(value, str):
        return value
    try:
        raw = json.loads(value)
    except ValueError:
        raw = value  # a template literal, not a submitter's (JSON-encoded) value
    if not isinstance(raw, str):
        return value
    quoted = shlex.quote(raw)
    text = yaml_json(quoted)
    emitted = _EMITTED.get()
    if emitted is not None:
        emitted.append((quoted, text))
    return text


def _raw(value: Any) -> Any:
    """A value as the submitter sent it: the template sees strings JSON-encoded (above)."""
    if isinstance(value, JsonDict | JsonList):
        return json.loads(value.text)
    if isinstance(value, jinja2.Undefined):
        return None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value  # a template literal
    return value


def _lines(value: Any, what: str) -> str | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)  # a list of requirement lines reads as the file would
    if value is None or isinstance(value, str):
        return value
    raise UserOptionsInvalid(f"user_endpoint_config: {what} must be a string")


def user_python_environment(runtime: Any, requirements: Any = None, worker_init: Any = None) -> str:
    """The `user_python_environment(...)` template function: a ``worker_init`` value that
    runs the workers in a uv environment matching the submitter (`endpoint.manager.userenv`),
    followed by the submitter's own ``worker_init``. Rendered as one YAML scalar."""
    # `_GC.user_runtime` (escaped like the options), a plain mapping, or nothing usable.
    if isinstance(runtime, JsonDict):
        raw_runtime = json.loads(runtime.text)
    else:
        raw_runtime = runtime if isinstance(runtime, dict) else {}
    try:
        script = userenv.worker_init_script(
            raw_runtime,
            _lines(_raw(requirements), "requirements"),
            _lines(_raw(worker_init), "worker_init"),
        )
    except UserEnvError as e:
        raise UserOptionsInvalid(f"user_endpoint_config: {e}") from None
    return yaml_json(script)


def _check_shell_escapes(emitted: list[tuple[str, str]], rendered: str, data: Any) -> None:
    scalars = list(_strings(data))
    for quoted, text in emitted:
        if _SHELL_ACTIVE.search(quoted) and rendered.count(text) > scalars.count(quoted):
            raise TemplateError(
                "a |shell_escape value containing $ or ` is used inside a longer YAML value, "
                "where the shell would still expand it; the template must use "
                "`key: {{ value|shell_escape }}` as the whole value"
            )


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


@functools.lru_cache(maxsize=8)
def _environment(template_dir: str | None) -> SandboxedEnvironment:
    # A loader on the template's directory lets it `include`/`extends` its siblings.
    loader = jinja2.FileSystemLoader(template_dir) if template_dir else None
    env = SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, loader=loader, keep_trailing_newline=True
    )
    env.filters["shell_escape"] = shell_escape
    env.globals["user_python_environment"] = user_python_environment
    return env


@functools.lru_cache(maxsize=32)
def _compiled(template_dir: str | None, text: str) -> jinja2.Template:
    if _BARE_RESERVED.search(text):
        log.warning(
            "the user config template uses parent_config/user_runtime/mapped_identity without "
            "the _GC. prefix; that spelling is deprecated"
        )
    try:
        return _environment(template_dir).from_string(text)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"user config template, line {e.lineno}: {e.message}") from e


def check_syntax(source: TemplateSource) -> None:
    """Compile the template now: a syntax error is the administrator's, at `start`."""
    _compiled(str(source.path.parent) if source.path else None, source.text)


@dataclass(frozen=True)
class Reserved:
    """What the manager adds for the template, under ``_GC``."""

    user_runtime: dict[str, Any]
    parent_config: dict[str, Any]
    mapped_identity: dict[str, Any]
    env: dict[str, str]

    def variables(self) -> dict[str, Any]:
        gc = {
            "user_runtime": escape_values(self.user_runtime),
            "parent_config": self.parent_config,
            "mapped_identity": self.mapped_identity,
            "env": dict(self.env),
        }
        bare = {k: gc[k] for k in ("user_runtime", "parent_config", "mapped_identity")}
        return {"_GC": gc, **bare}


def render_text(source: TemplateSource, options: dict[str, Any], reserved: Reserved) -> str:
    """Check the options and render the template; the YAML is not yet validated."""
    if not isinstance(options, dict):
        raise UserOptionsInvalid("user_endpoint_config must be a JSON object")
    check_options(options, source.schema)
    template_dir = str(source.path.parent) if source.path else None
    template = _compiled(template_dir, source.text)
    variables = {**escape_values(options), **reserved.variables()}
    emitted: list[tuple[str, str]] = []
    token = _EMITTED.set(emitted)
    try:
        text = template.render(variables)
    except jinja2.UndefinedError as e:
        raise UserOptionsInvalid(
            f"user endpoint template: {e.message}; set it in user_endpoint_config"
        ) from e
    except jinja2.TemplateError as e:  # SecurityError, a failed include, ...
        raise TemplateError(f"user endpoint template: {e}") from e
    finally:
        _EMITTED.reset(token)
    if len(text.encode()) > MAX_RENDERED_BYTES:
        raise TemplateError(f"the rendered config is larger than {MAX_RENDERED_BYTES} bytes")
    _check_shell_escapes(emitted, text, _parse(text))
    return text


def _parse(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TemplateError(f"the rendered user endpoint config is not valid YAML: {e}") from e


def render(source: TemplateSource, options: dict[str, Any], reserved: Reserved) -> Rendered:
    text = render_text(source, options, reserved)
    return Rendered(text, validate_rendered(text, with_paths=False))


# ---- `render-user-config`: the same rendering, for an administrator ----------------------


@dataclass(frozen=True)
class DebugInputs:
    """What `render-user-config` was given: texts (already read), or None for the default."""

    template: str | None = None
    template_path: Path | None = None
    user_options: str | None = None
    user_schema: str | None = None
    parent_config: str | None = None
    user_runtime: str | None = None
    mapped_identity: str | None = None


def local_runtime() -> dict[str, Any]:
    """A `user_runtime` like the SDK's, describing this machine (the default for debugging)."""
    import platform
    import sys

    return {
        "globus_compute_sdk_version": None,
        "python_version": platform.python_version(),
        "python": {
            "version": platform.python_version(),
            "version_tuple": list(sys.version_info[:3]),
            "version_info": list(sys.version_info),
            "version_description": sys.version,
            "implementation": platform.python_implementation(),
            "compiler": platform.python_compiler(),
        },
        "platform": {
            "architecture": list(platform.architecture()),
            "machine": platform.machine(),
            "node": platform.node(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "release": platform.release(),
        },
    }


def _json_object(text: str | None, what: str, default: dict[str, Any]) -> dict[str, Any]:
    if text is None:
        return default
    try:
        value = json.loads(text)
    except ValueError as e:
        raise TemplateError(f"{what}: not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise TemplateError(f"{what}: must be a JSON object")
    return value


def _yaml_object(text: str | None, what: str, default: dict[str, Any]) -> dict[str, Any]:
    if text is None:
        return default
    value = _parse(text)
    if not isinstance(value, dict):
        raise TemplateError(f"{what}: must be a YAML mapping")
    return value


def render_debug(
    inputs: DebugInputs,
    manager_dir: Path | None = None,
    manager_config: dict[str, Any] | None = None,
) -> str:
    """Render and check a config exactly as a manager would, with stand-ins for what only a
    real start command has (this machine's runtime, the current user)."""
    from endpoint.manager.identity import LocalUser, Principal  # only the debugging path needs it

    if inputs.template is not None:
        source = TemplateSource(inputs.template, inputs.template_path)
    elif manager_dir is not None:
        cfg = manager_config or {}
        tpath, spath = cfg.get("user_config_template_path"), cfg.get("user_config_schema_path")
        source = source_for(
            manager_dir, Path(tpath) if tpath else None, Path(spath) if spath else None
        )
    else:
        raise TemplateError("give a template (-t) or a manager endpoint (-e)")
    if inputs.user_schema is not None:
        source = TemplateSource(
            source.text, source.path, load_schema_text(inputs.user_schema, "user schema")
        )
    user = Principal(LocalUser.current(), "00000000-0000-0000-0000-000000000000")
    reserved = Reserved(
        user_runtime=_json_object(inputs.user_runtime, "user runtime", local_runtime()),
        parent_config=_yaml_object(inputs.parent_config, "parent config", manager_config or {}),
        mapped_identity=_json_object(
            inputs.mapped_identity, "mapped identity", user.template_view()
        ),
        env=dict(os.environ),
    )
    options = _json_object(inputs.user_options, "user options", {})
    return render(source, options, reserved).text
