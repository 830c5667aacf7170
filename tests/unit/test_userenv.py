"""Per-user Python environments: the spec a submitter gets, and the default template's use of
it (issue 15). Building them for real: tests/integration/test_userenv.py and
tests/e2e/test_manager_user_envs.py."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import endpoint
from endpoint.errors import UserEnvError, UserOptionsInvalid
from endpoint.manager import defaults, templating, userenv
from endpoint.manager.userenv import EnvSpec

OWN = f"{sys.version_info.major}.{sys.version_info.minor}"
OWN_SDK = userenv.installed("globus-compute-sdk")


def runtime(version: list[int] | None = None, sdk: str | None = OWN_SDK) -> dict[str, Any]:
    rt = templating.local_runtime()
    if version is not None:
        rt["python"]["version_tuple"] = version
    rt["globus_compute_sdk_version"] = sdk
    return rt


def render(options: dict[str, Any], rt: dict[str, Any] | None = None) -> dict[str, Any]:
    source = templating.TemplateSource(defaults.USER_TEMPLATE, None, defaults.USER_SCHEMA)
    reserved = templating.Reserved(rt or runtime(), {}, {}, {})
    return dict(yaml.safe_load(templating.render(source, options, reserved).text))


def worker_init(options: dict[str, Any], rt: dict[str, Any] | None = None) -> str:
    return str(render(options, rt)["engine"]["provider"]["worker_init"] or "")


def spec_in(script: str) -> EnvSpec:
    (line,) = [x for x in script.splitlines() if "endpoint.manager.userenv activate" in x]
    return EnvSpec.decode(line.split(" activate ")[1].split(")")[0])


# ---- the spec --------------------------------------------------------------------------------


def test_the_spec_takes_the_submitters_python_minor_and_sdk_and_the_endpoints_pins() -> None:
    spec = userenv.spec_for(runtime([3, 12, 4], "4.18.0"), "six\n")
    assert (spec.python, spec.sdk, spec.requirements) == ("3.12", "4.18.0", "six")
    assert spec.endpoint == endpoint.__version__
    assert spec.parsl == userenv.installed("parsl") and spec.dill == userenv.installed("dill")
    assert spec.name.startswith("py3.12-sdk4.18.0-") and len(spec.key) == 64


def test_equal_requirements_share_a_key_and_other_inputs_do_not() -> None:
    base = userenv.spec_for(runtime([3, 12, 1]), "six\n\ntomli-w  \n")
    assert userenv.spec_for(runtime([3, 12, 9]), "six\ntomli-w").key == base.key  # any patch
    others = [
        userenv.spec_for(runtime([3, 13, 0]), "six\ntomli-w"),
        userenv.spec_for(runtime([3, 12, 1], "4.17.0"), "six\ntomli-w"),
        userenv.spec_for(runtime([3, 12, 1]), "six"),
        EnvSpec(**{**base.__dict__, "parsl": "2020.1.1"}),  # another endpoint release
    ]
    assert len({base.key, *(o.key for o in others)}) == 5


@pytest.mark.parametrize(
    "rt",
    [
        {},
        {"python": {"version_tuple": ["3; rm -rf ~", 1]}, "globus_compute_sdk_version": "$(id)"},
        {"python_version": "../../etc", "globus_compute_sdk_version": 4},
    ],
)
def test_a_runtime_of_unexpected_shape_falls_back_to_the_endpoints_own(rt: dict[str, Any]) -> None:
    spec = userenv.spec_for(rt, None)
    assert spec.python == OWN and spec.sdk is None
    assert not userenv.needs_env(spec)


def test_the_endpoints_own_python_needs_no_environment() -> None:
    assert not userenv.needs_env(userenv.spec_for(runtime(), None))
    assert userenv.needs_env(userenv.spec_for(runtime(), "six"))
    assert userenv.needs_env(userenv.spec_for(runtime(sdk="4.0.0"), None))
    other = 12 if OWN != "3.12" else 13
    assert userenv.needs_env(userenv.spec_for(runtime([3, other, 0]), None))


def test_a_spec_round_trips_and_a_forged_one_is_refused() -> None:
    spec = userenv.spec_for(runtime([3, 12, 1]), "six")
    assert EnvSpec.decode(spec.encode()) == spec

    def forged(**change: Any) -> str:
        doc = {**spec.__dict__, **change}
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()

    for bad, says in [
        (forged(python="3.12 --index-url http://x"), "Python version"),
        (forged(sdk="1.0 -e ."), "SDK version"),
        (forged(parsl="../x"), "parsl version"),
        (forged(requirements=["six"]), "must be a string"),
        (forged(extra=1), "wrong fields"),
        ("not base64!", "not valid"),
        ("A" * (userenv.MAX_SPEC_CHARS + 1), "longer than"),
    ]:
        with pytest.raises(UserEnvError, match=says):
            EnvSpec.decode(bad)


def test_requirements_are_limited_before_use() -> None:
    with pytest.raises(UserEnvError, match="larger than"):
        userenv.normalize_requirements("x" * (userenv.MAX_REQUIREMENTS + 1))
    with pytest.raises(UserEnvError, match="NUL"):
        userenv.normalize_requirements("six\x00")


def test_activation_declares_the_minor_and_quotes_the_path(tmp_path: Path) -> None:
    env_dir = tmp_path / "it's here"
    (env_dir / "bin").mkdir(parents=True)
    script = userenv.activation(env_dir, "3.12")
    show = 'printf "%s|%s|%s|%s" "$VIRTUAL_ENV" "${PATH%%:*}" "$COMPUTE_ENDPOINT_WORKER_PYTHON" '
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/x"}
    out = subprocess.run(
        ["bash", "-c", script + show + '"${PYTHONPATH-unset}"'],
        capture_output=True, text=True, check=True, env=env,
    ).stdout  # fmt: skip
    assert out == f"{env_dir}|{env_dir}/bin|3.12|unset"


def test_uvs_cache_is_private_beside_the_environments_unless_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "compute" / userenv.CACHE_DIR_NAME
    monkeypatch.delenv("UV_CACHE_DIR", raising=False)
    cache = userenv.uv_cache(root)
    assert cache == tmp_path / "compute" / userenv.UV_CACHE_NAME
    assert (cache.stat().st_mode & 0o777) == 0o700
    cache.chmod(0o755)  # as uv makes its own
    assert (userenv.uv_cache(root).stat().st_mode & 0o777) == 0o700
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "site-cache"))
    assert userenv.uv_cache(root) == tmp_path / "site-cache"


# ---- the default template -------------------------------------------------------------------


def test_the_default_template_stops_idle_user_endpoints_unless_the_user_says_otherwise() -> None:
    cfg = render({})
    assert (cfg["idle_heartbeats_soft"], cfg["idle_heartbeats_hard"]) == (10, 5760)
    cfg = render({"idle_heartbeats_soft": 2, "idle_heartbeats_hard": 100})
    assert (cfg["idle_heartbeats_soft"], cfg["idle_heartbeats_hard"]) == (2, 100)
    with pytest.raises(UserOptionsInvalid, match="idle_heartbeats_soft"):
        render({"idle_heartbeats_soft": -1})


def test_the_default_template_without_requirements_uses_the_endpoints_python() -> None:
    assert worker_init({}) == ""
    assert worker_init({"worker_init": "module load x"}) == "module load x"


def test_the_default_template_asks_for_the_submitters_environment() -> None:
    script = worker_init({"requirements": "six", "worker_init": "module load x"})
    spec = spec_in(script)
    assert spec.requirements == "six" and spec.python == OWN and spec.sdk == OWN_SDK
    # The environment first (a failed build ends the block), then the user's own lines.
    assert script.index("userenv activate") < script.index("|| exit") < script.index("module")
    assert spec_in(worker_init({}, runtime([3, 12, 1]))).python == "3.12"


def test_requirements_reach_no_shell_and_no_yaml_as_text() -> None:
    evil = "six\"\nengine: {type: Bogus}\n$(touch /tmp/pwned) `id` '; exit 0"
    cfg = render({"requirements": evil})
    assert cfg["engine"]["type"] == "GlobusComputeEngine"
    script = cfg["engine"]["provider"]["worker_init"]
    assert "pwned" not in script and "`" not in script
    assert spec_in(script).requirements == "\n".join(x.rstrip() for x in evil.splitlines())


def test_a_requirements_list_reads_as_lines_and_other_types_are_refused() -> None:
    source = templating.TemplateSource(defaults.USER_TEMPLATE)  # no schema: the function checks
    reserved = templating.Reserved(runtime(), {}, {}, {})
    text = templating.render_text(source, {"requirements": ["six", "tomli-w"]}, reserved)
    script = yaml.safe_load(text)["engine"]["provider"]["worker_init"]
    assert spec_in(script).requirements == "six\ntomli-w"
    for bad in ({"a": 1}, 5, True, [1]):
        with pytest.raises(UserOptionsInvalid, match="requirements must be a string"):
            templating.render_text(source, {"requirements": bad}, reserved)


def test_the_worker_side_agrees_on_the_names_it_shares() -> None:
    from endpoint.worker import launch

    assert userenv.WORKER_PYTHON_ENV == launch.WORKER_PYTHON_ENV
    assert userenv.WORKER_DIST == launch.WORKER_DIST
    assert userenv.source_wheel() == launch.worker_wheel()
