"""A config file or an endpoint directory's config: ``config.yaml``, or a legacy ``config.py``
(executed, so imported only when one is found)."""

from __future__ import annotations

import logging
from pathlib import Path

from endpoint.config.loader import PYTHON_FILE, YAML_FILE, AnyConfig, load_config_text
from endpoint.errors import ConfigError

log = logging.getLogger(__name__)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e


def load_config(path: Path) -> tuple[AnyConfig, str]:
    """The parsed config and its raw text (sent as registration metadata).

    ``path`` is a ``config.yaml`` or a legacy ``config.py`` (any ``*.py`` file).
    """
    path = Path(path)
    if path.suffix == ".py":
        from endpoint.config.legacy import load_legacy  # executes Python: only on demand

        return load_legacy(path)
    text = _read(path)
    return load_config_text(text, str(path), base_dir=path.parent.absolute()), text


def load_endpoint_dir(ep_dir: Path) -> tuple[AnyConfig, str, Path]:
    """Load an endpoint directory's config: ``config.py`` wins over ``config.yaml``.

    That precedence is the official endpoint's; we warn when both exist, since the YAML file
    is then silently unused.
    """
    ep_dir = Path(ep_dir)
    py, yml = ep_dir / PYTHON_FILE, ep_dir / YAML_FILE
    if py.is_file():
        if yml.is_file():
            log.warning(
                "%s: both config.py and config.yaml exist; using config.py (config.yaml is"
                " ignored until config.py is removed)",
                ep_dir,
            )
        cfg, text = load_config(py)
        return cfg, text, py
    if yml.is_file():
        cfg, text = load_config(yml)
        return cfg, text, yml
    raise ConfigError(f"{ep_dir}: no {YAML_FILE} (or legacy {PYTHON_FILE}) in this directory")
