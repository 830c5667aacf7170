"""A user endpoint config rendered from a manager's template, checked as a user endpoint's.

The manager checks what it rendered before starting anything; the user endpoint checks it again
with ``paths``, which only its own environment can expand. Both ends use this one function.
"""

from __future__ import annotations

from endpoint.config.loader import parse_yaml, validate
from endpoint.config.model import EndpointConfig
from endpoint.errors import ConfigError, TemplateError


def validate_rendered(text: str, *, with_paths: bool = True) -> EndpointConfig:
    """The rendered YAML as a user endpoint config, or TemplateError saying why not.

    The manager checks without ``paths``: those expand ``~`` and ``$VAR`` in the user
    endpoint's own environment, which only the user endpoint has (it checks them itself).
    """
    source = "rendered user endpoint config"
    try:
        data, lines = parse_yaml(text, source)
    except ConfigError as e:
        raise TemplateError(str(e)) from e
    if "engine" not in data:
        raise TemplateError("the rendered user endpoint config has no `engine` block")
    if "high_assurance" in data:
        raise TemplateError("a user endpoint template may not set high_assurance")
    if not with_paths:
        data = {k: v for k, v in data.items() if k != "paths"}
    try:
        cfg = validate(data, source=source, lines=lines)
    except ConfigError as e:
        raise TemplateError(str(e)) from e
    assert isinstance(cfg, EndpointConfig)  # it has `engine`
    return cfg
