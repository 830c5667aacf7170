"""User endpoint templates: escaping, reserved names, schema, sandbox, shell quoting, checks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from endpoint.config import EndpointConfig
from endpoint.config.rendered import validate_rendered
from endpoint.errors import TemplateError, UserOptionsInvalid
from endpoint.manager import templating
from endpoint.manager.identity import LocalUser, Principal
from endpoint.manager.templating import Reserved, TemplateSource, render, render_text

BASE = "engine:\n  type: ThreadPoolEngine\n  max_workers: {{ workers|default(2) }}\n"
IDENTITY = "11111111-2222-3333-4444-555555555555"


def reserved(**overrides: Any) -> Reserved:
    values: dict[str, Any] = {
        "user_runtime": {"python": {"version": "3.11.7"}, "globus_compute_sdk_version": "4.19.0"},
        "parent_config": {"display_name": "the manager", "public": False},
        "mapped_identity": Principal(LocalUser.current(), IDENTITY).template_view(),
        "env": {"SCRATCH": "/scratch/x"},
    }
    values.update(overrides)
    return Reserved(**values)


def rendered(template: str, options: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    text = render_text(
        TemplateSource(template, kw.pop("path", None), kw.pop("schema", None)),
        options or {},
        reserved(),
    )
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def test_options_fill_the_template_and_the_result_is_a_user_endpoint_config() -> None:
    out = render(
        TemplateSource(BASE + "display_name: {{ label }}\n"),
        {"workers": 3, "label": "x"},
        reserved(),
    )
    assert isinstance(out.config, EndpointConfig)
    assert out.config.engine.max_workers == 3  # type: ignore[union-attr]
    assert out.config.display_name == "x"
    assert len(out.config_hash) == 16


def test_strings_arrive_json_quoted_so_templates_compare_with_quotes() -> None:
    tpl = BASE + "{% if mode == '\"fast\"' %}idle_heartbeats_soft: 3{% endif %}\n"
    assert rendered(tpl, {"mode": "fast"})["idle_heartbeats_soft"] == 3
    assert "idle_heartbeats_soft" not in rendered(tpl, {"mode": "slow"})


def test_none_renders_as_yaml_null_and_numbers_and_booleans_pass_through() -> None:
    tpl = BASE + "display_name: {{ name }}\ndebug: {{ flag }}\nheartbeat_period: {{ p }}\n"
    out = rendered(tpl, {"name": None, "flag": True, "p": 7.5})
    assert out["display_name"] is None and out["debug"] is True and out["heartbeat_period"] == 7.5


@pytest.mark.parametrize(
    "evil",
    [
        "x\nidle_heartbeats_soft: 1\nengine: {type: Bogus}",
        'x" \nallowed_functions: []\n#',
        "'; engine: !!python/object/apply:os.system ['touch /tmp/pwned']",
        "{{ 7 * 7 }}",
    ],
)
def test_yaml_injection_attempts_stay_one_inert_scalar(evil: str) -> None:
    out = rendered(BASE + "display_name: {{ label }}\n", {"label": evil})
    assert out["display_name"] == evil
    assert set(out) == {"engine", "display_name"}
    assert out["engine"] == {"type": "ThreadPoolEngine", "max_workers": 2}


@pytest.mark.parametrize("name", ["_GC", "parent_config", "user_runtime", "mapped_identity"])
def test_reserved_names_cannot_be_set_by_a_user(name: str) -> None:
    with pytest.raises(UserOptionsInvalid, match=f"{name} is reserved"):
        rendered(BASE, {name: "mine"})


def test_reserved_variables_are_available_under_gc_and_by_their_old_names() -> None:
    tpl = (
        BASE
        + "display_name: {{ _GC.user_runtime.python.version }}\n"
        + "endpoint_setup: echo {{ _GC.mapped_identity.local.uname }} {{ _GC.env.SCRATCH }}\n"
        + "endpoint_teardown: echo {{ parent_config.display_name }}"
        + " {{ mapped_identity.globus.id }}\n"
    )
    out = rendered(tpl)
    assert out["display_name"] == "3.11.7"  # the SDK's runtime is escaped like user values
    assert out["endpoint_setup"] == f"echo {LocalUser.current().name} /scratch/x"
    assert out["endpoint_teardown"] == f"echo the manager {IDENTITY}"


def test_a_missing_option_is_an_error_naming_it() -> None:
    with pytest.raises(UserOptionsInvalid, match="'account' is undefined"):
        rendered(BASE + "display_name: {{ account }}\n")


def test_the_schema_rejects_options_with_a_message_naming_the_field() -> None:
    schema = {
        "type": "object",
        "properties": {"workers": {"type": "integer", "maximum": 8}},
        "additionalProperties": False,
    }
    assert rendered(BASE, {"workers": 4}, schema=schema)["engine"]["max_workers"] == 4
    with pytest.raises(UserOptionsInvalid, match=r"workers: 'many' is not of type 'integer'"):
        rendered(BASE, {"workers": "many"}, schema=schema)
    with pytest.raises(UserOptionsInvalid, match="workers: 99 is greater than the maximum"):
        rendered(BASE, {"workers": 99}, schema=schema)
    with pytest.raises(UserOptionsInvalid, match="Additional properties"):
        rendered(BASE, {"other": 1}, schema=schema)


def test_an_invalid_schema_file_is_the_administrators_error(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text(BASE)
    (tmp_path / "s.json").write_text('{"type": "no-such-type"}')
    with pytest.raises(TemplateError, match="not a valid JSON schema"):
        templating.load_source(tmp_path / "t.j2", tmp_path / "s.json")
    (tmp_path / "s.json").write_text("{nope")
    with pytest.raises(TemplateError, match="not valid JSON"):
        templating.load_source(tmp_path / "t.j2", tmp_path / "s.json")


def test_the_sandbox_refuses_python_internals() -> None:
    with pytest.raises(TemplateError, match=r"unsafe|not safely callable|access to attribute"):
        rendered(BASE + "display_name: {{ ''.__class__.__mro__[1].__subclasses__() }}\n")


def test_nested_option_keys_that_could_change_yaml_structure_are_refused() -> None:
    tpl = BASE + "{% for k, v in mods.items() %}# {{ k }}={{ v }}\n{% endfor %}"
    assert rendered(tpl, {"mods": {"gcc/12.1": "on"}})["engine"]["max_workers"] == 2
    with pytest.raises(UserOptionsInvalid, match="key 'x\\\\nengine: 1' under mods"):
        rendered(tpl, {"mods": {"x\nengine: 1": "on"}})


def test_unsupported_value_types_are_refused() -> None:
    with pytest.raises(UserOptionsInvalid, match="unsupported type"):
        templating.escape_values({"a": object()})


def test_shell_escape_as_a_whole_value_gives_the_shell_one_word(tmp_path: Path) -> None:
    evil = 'it\'s $(touch pwned); `touch pwned2` "q"\nnext'
    out = rendered(BASE + "endpoint_setup: {{ arg|shell_escape }}\n", {"arg": evil})
    word = out["endpoint_setup"]
    echoed = subprocess.run(
        ["/bin/sh", "-c", f"printf %s {word}"], cwd=tmp_path, capture_output=True, text=True
    )
    assert echoed.stdout == evil
    assert not list(tmp_path.iterdir())  # nothing was executed


def test_shell_escape_inside_a_longer_line_is_safe_or_refused(tmp_path: Path) -> None:
    tpl = BASE + "endpoint_setup: echo {{ arg|shell_escape }} > out.txt\n"
    setup = rendered(tpl, {"arg": "hi; touch pwned"})["endpoint_setup"]
    subprocess.run(["/bin/sh", "-c", setup], cwd=tmp_path, check=True)
    assert (tmp_path / "out.txt").read_text() == "'hi; touch pwned'\n"
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(TemplateError, match="whole value"):
        rendered(tpl, {"arg": "$(touch pwned)"})


def test_the_render_must_be_a_user_endpoint_config() -> None:
    with pytest.raises(TemplateError, match="no `engine` block"):
        render(TemplateSource("display_name: x\n"), {}, reserved())
    with pytest.raises(TemplateError, match="may not set high_assurance"):
        render(TemplateSource(BASE + "high_assurance: false\n"), {}, reserved())
    with pytest.raises(TemplateError, match="max_workers"):
        render(TemplateSource(BASE), {"workers": -1}, reserved())
    with pytest.raises(TemplateError, match="not valid YAML"):
        render(TemplateSource(BASE + "x: [\n"), {}, reserved())


def test_template_syntax_errors_name_the_line() -> None:
    with pytest.raises(TemplateError, match="line 2"):
        render(TemplateSource("engine:\n  {% if %}\n"), {}, reserved())


def test_templates_can_include_their_siblings(tmp_path: Path) -> None:
    (tmp_path / "engine.j2").write_text(BASE)
    (tmp_path / TEMPLATE_NAME).write_text('{% include "engine.j2" %}display_name: {{ n }}\n')
    source = templating.source_for(tmp_path, None, None)
    out = render(source, {"n": "inc"}, reserved())
    assert out.config.display_name == "inc"


TEMPLATE_NAME = templating.TEMPLATE_FILE


def test_a_plain_yaml_template_is_found_when_the_j2_file_is_missing(tmp_path: Path) -> None:
    (tmp_path / "user_config_template.yaml").write_text(BASE)
    assert templating.source_for(tmp_path, None, None).text == BASE


def test_paths_are_left_to_the_user_endpoint_that_has_the_environment() -> None:
    tpl = BASE + "paths:\n  endpoint_dir: $UNSET_IN_THE_MANAGER/x\n"
    out = render(TemplateSource(tpl), {}, reserved())  # the manager does not expand it
    assert "UNSET_IN_THE_MANAGER" in out.text
    with pytest.raises(TemplateError, match="UNSET_IN_THE_MANAGER is not set"):
        validate_rendered(out.text)


def test_rendered_configs_that_differ_have_different_hashes() -> None:
    src = TemplateSource(BASE)
    a, b = (render(src, {"workers": n}, reserved()) for n in (1, 2))
    assert a.config_hash != b.config_hash
    assert render(src, {"workers": 1}, reserved()).config_hash == a.config_hash


def test_render_debug_uses_stand_ins_for_the_reserved_variables() -> None:
    inputs = templating.DebugInputs(
        template=BASE + "display_name: {{ _GC.mapped_identity.local.uname }}\n",
        user_options=json.dumps({"workers": 5}),
    )
    out = yaml.safe_load(templating.render_debug(inputs))
    assert out["display_name"] == LocalUser.current().name
    assert out["engine"]["max_workers"] == 5


# ---- issue 13: non-string values and astral characters --------------------------------------

FLOW = BASE + "provider: {type: LocalProvider, tags: {{ tags }}, opts: {{ opts }}}\n"
#: Closes Python's repr of a list (single quotes, which YAML reads without backslash escapes)
#: and adds keys to the flow mapping around it.
BREAKOUT = "x'], account: evil, qos: high, nodes_per_block: 64, y: ['"


def test_list_and_dict_values_render_as_json_and_cannot_add_keys() -> None:
    tags = [BREAKOUT, "plain", 3, 2.5, None, True, ['"', "\\"]]
    opts = {"k": BREAKOUT, "n": {"deep": "x'}, qos: high, z: {'"}}
    out = rendered(FLOW, {"tags": tags, "opts": opts})
    assert out["provider"] == {"type": "LocalProvider", "tags": tags, "opts": opts}


def test_list_items_still_arrive_json_quoted_in_loops() -> None:
    tpl = BASE + "endpoint_setup: {% for m in mods %}{{ m }}{% endfor %}\n"
    assert rendered(tpl, {"mods": ["a"]})["endpoint_setup"] == "a"


@pytest.mark.parametrize(
    "text",
    ["emoji 😀 and 🧪", "café", "\U0010fffd", "nel\x85ls\u2028ps\u2029del\x7fbom\ufeff"],
)
def test_every_character_reaches_the_rendered_config_intact(text: str) -> None:
    out = render(TemplateSource(BASE + "display_name: {{ label }}\n"), {"label": text}, reserved())
    assert out.config.display_name == text
    out.text.encode()  # no lone surrogates: the text crosses a pipe as UTF-8
    more = [text, {"k": text}]
    assert rendered(BASE + "provider: {x: {{ more }}}\n", {"more": more})["provider"] == {"x": more}


def test_shell_escape_keeps_astral_characters() -> None:
    tpl = BASE + "endpoint_setup: {{ arg|shell_escape }}\n"
    assert rendered(tpl, {"arg": "echo 😀"})["endpoint_setup"] == "'echo 😀'"


@pytest.mark.parametrize(
    "options",
    [
        {"label": "half \ud83d a smile"},
        {"label": ["\ude00"]},
        {"label": {"k": "\udfff"}},
    ],
)
def test_lone_surrogates_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(UserOptionsInvalid, match="label"):
        rendered(BASE + "display_name: x\n", options)


@pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused(number: float) -> None:
    with pytest.raises(UserOptionsInvalid, match="finite"):
        rendered(BASE + "display_name: x\n", {"n": {"deep": [number]}})
