"""Fuzzing `load_config_text`: random text, mutated real configs and random documents.

Whatever the file holds, loading it gives a config or a `ConfigError` whose message names the
file; never a library exception (TypeError, RecursionError, yaml errors) and never a hang.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from endpoint.config import load_config_text
from endpoint.config.loader import MAX_DEPTH, validate
from endpoint.config.model import ENGINE_MODELS
from endpoint.errors import ConfigError

CONFIGS = Path(__file__).parent / "configs"
EXAMPLES = sorted(p.read_text() for p in CONFIGS.glob("*.yaml"))
SOURCE = "fuzz.yaml"

FUZZ = settings(
    max_examples=400,
    deadline=3000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def load_or_config_error(text: str, tmp: Path) -> Any:
    try:
        return load_config_text(text, SOURCE, base_dir=tmp)
    except ConfigError as e:
        assert str(e).startswith(SOURCE), f"error does not name the file: {e}"
        return e


#: Text built from YAML's own punctuation, so the parser gets past the first character.
yamlish = hs.lists(
    hs.sampled_from(
        [
            "engine:",
            "type:",
            " ThreadPoolEngine",
            " GlobusComputeEngine",
            "provider:",
            "\n",
            "\n  ",
            "\n    ",
            "- ",
            ": ",
            "{",
            "}",
            "[",
            "]",
            ",",
            "&a ",
            "*a",
            "&b ",
            "*b",
            "!!binary ",
            "!!set ",
            "!!str ",
            "!!python/name:os.system",
            "? ",
            "~",
            "'",
            '"',
            "|",
            ">",
            "#",
            "%YAML 1.1\n",
            "---\n",
            "...\n",
            "\t",
            "0x1f",
            "1e400",
            ".nan",
            "2001-12-14",
            "<<: ",
            "max_workers_per_node:",
            "allowed_serializers:",
            "display_name:",
            "x",
        ]
    )
    | hs.text(max_size=5),
    max_size=40,
).map("".join)


@hs.composite
def mutated_example(draw: hs.DrawFn) -> str:
    lines = draw(hs.sampled_from(EXAMPLES)).splitlines()
    for _ in range(draw(hs.integers(1, 4))):
        if not lines:
            break
        i = draw(hs.integers(0, len(lines) - 1))
        op = draw(hs.sampled_from(["drop", "dup", "indent", "dedent", "value", "garble"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "indent":
            lines[i] = "  " + lines[i]
        elif op == "dedent":
            lines[i] = lines[i].lstrip()
        elif op == "value" and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            value = draw(hs.sampled_from(["", " ~", " -1", " [1, 2]", " {a: 1}", " yes", " 1e9"]))
            lines[i] = key + ":" + value
        else:
            pos = draw(hs.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(hs.text(max_size=4)) + lines[i][pos:]
    return "\n".join(lines) + "\n"


scalars = (
    hs.none()
    | hs.booleans()
    | hs.integers()
    | hs.floats(allow_nan=False)
    | hs.text(max_size=15)
    | hs.sampled_from(list(ENGINE_MODELS))
)
KEYS = [
    "engine",
    "type",
    "provider",
    "max_workers_per_node",
    "allowed_serializers",
    "allowed_functions",
    "heartbeat_period",
    "container_type",
    "container_uri",
    "paths",
    "endpoint_dir",
    "pam",
    "admins",
    "amqp_port",
    "address",
    "strategy",
    "launcher",
    "nodes_per_block",
]
documents = hs.recursive(
    scalars,
    lambda inner: (
        hs.lists(inner, max_size=3)
        | hs.dictionaries(hs.sampled_from(KEYS) | hs.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)


@FUZZ
@given(hs.text(max_size=200))
def test_random_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    load_or_config_error(text, tmp_path_factory.getbasetemp())


@FUZZ
@given(yamlish)
def test_yaml_ish_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    load_or_config_error(text, tmp_path_factory.getbasetemp())


@FUZZ
@given(mutated_example())
def test_mutated_real_configs(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    load_or_config_error(text, tmp_path_factory.getbasetemp())


@FUZZ
@given(hs.dictionaries(hs.sampled_from(KEYS) | hs.text(max_size=8), documents, max_size=5))
def test_random_documents(tmp_path_factory: pytest.TempPathFactory, doc: dict[str, Any]) -> None:
    load_or_config_error(yaml.safe_dump(doc), tmp_path_factory.getbasetemp())


@FUZZ
@given(hs.dictionaries(hs.sampled_from(KEYS) | hs.text(max_size=8), documents, max_size=5))
def test_validate_random_dicts(doc: dict[str, Any]) -> None:
    try:
        validate(doc, source=SOURCE)
    except ConfigError as e:
        assert str(e).startswith(SOURCE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("engine: &a {type: ThreadPoolEngine, x: [*a]}\n", "refers to a value that contains it"),
        ("display_name: &a [*a]\n", "refers to a value that contains it"),
        ("engine: {type: [ThreadPoolEngine]}\n", "is not a valid engine type"),
        ("engine: {type: {a: 1}}\n", "is not a valid engine type"),
        ("x: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n", "levels deep"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
)
def test_hostile_documents_get_a_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config_text(text, SOURCE, base_dir=tmp_path)


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    # 10**10 scalars once expanded: an answer at all (within the per-test timeout, in this
    # process's memory) means the loader counted and stopped instead of building them.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    with pytest.raises(ConfigError, match="aliases expand to more than"):
        load_config_text("\n".join(lines) + "\n", SOURCE, base_dir=tmp_path)


def test_shared_aliases_in_a_real_config_still_load(tmp_path: Path) -> None:
    text = (
        "engine:\n  type: ThreadPoolEngine\n  max_workers: &n 3\n"
        "  allowed_serializers: &s\n"
        "    - globus_compute_sdk.*Code\n    - globus_compute_sdk.*Data\n"
        "display_name: x\n"
    )
    cfg = load_config_text(text, SOURCE, base_dir=tmp_path)
    assert cfg.engine.type == "ThreadPoolEngine"  # type: ignore[union-attr]
