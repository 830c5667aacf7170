"""Issue 13 (finding 9): numbers in a config are finite, and provider options have the types
and ranges Parsl assumes, so `check-config` refuses what would break later, naming the key
and its line."""

from __future__ import annotations

import pytest

from endpoint.config.loader import load_config_text
from endpoint.errors import ConfigError

HTEX = """\
engine:
  type: GlobusComputeEngine
  provider:
    type: {provider}
{options}
"""


def failure(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    return str(caught.value)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN", "-.Inf"])
@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("heartbeat_period: {v}\nengine: {{type: ThreadPoolEngine}}\n", "heartbeat_period", 1),
        (
            "engine: {{type: ThreadPoolEngine}}\nheartbeat_threshold: {v}\n",
            "heartbeat_threshold",
            2,
        ),
        ("heartbeat_period: {v}\n", "heartbeat_period", 1),  # a manager
        ("mu_child_ep_grace_period_s: {v}\n", "mu_child_ep_grace_period_s", 1),
        (
            "engine:\n  type: ProcessPoolEngine\n  container_max_idletime: {v}\n",
            "engine.container_max_idletime",
            3,
        ),
        (
            "engine:\n  type: GlobusComputeEngine\n  job_status_kwargs:\n    max_idletime: {v}\n",
            "engine.job_status_kwargs.max_idletime",
            4,
        ),
        (
            "engine:\n  type: GlobusComputeEngine\n  cores_per_worker: {v}\n",
            "engine.cores_per_worker",
            3,
        ),
        (
            "engine:\n  type: GlobusComputeEngine\n  provider:\n    type: LocalProvider\n"
            "    parallelism: {v}\n",
            "engine.provider.parallelism",
            5,
        ),
        (
            "engine:\n  type: GlobusComputeEngine\n  provider:\n    type: SlurmProvider\n"
            "    parallelism: {v}\n",
            "engine.provider.parallelism",
            5,
        ),
    ],
)
def test_non_finite_numbers_are_refused_with_key_and_line(
    text: str, key: str, line: int, value: str
) -> None:
    message = failure(text.format(v=value))
    assert f"{key} (line {line})" in message
    assert "finite" in message


@pytest.mark.parametrize(
    ("provider", "option", "why"),
    [
        ("LocalProvider", "max_blocks: -1", "at least 0"),
        ("LocalProvider", "init_blocks: -3", "at least 0"),
        ("LocalProvider", "min_blocks: 1.5", "integer"),
        ("LocalProvider", "max_blocks: true", "integer"),
        ("LocalProvider", "nodes_per_block: 0", "at least 1"),
        ("LocalProvider", "worker_init: [1, 2]", "string"),
        ("LocalProvider", "worker_init: {a: 1}", "string"),
        ("LocalProvider", "parallelism: 2", "between 0 and 1"),
        ("LocalProvider", "parallelism: fast", "number"),
        ("LocalProvider", "cmd_timeout: 0", "at least 1"),
        ("PBSProProvider", "account: [a, b]", "string"),
        ("PBSProProvider", "cpus_per_node: -2", "at least 1"),
        ("PBSProProvider", "scheduler_options: 3", "string"),
        ("LSFProvider", "bsub_redirection: maybe", "true or false"),
        ("SlurmProvider", "max_blocks: -1", "at least 0"),
        ("SlurmProvider", "exclusive: 2", "bool"),  # SlurmProvider's own (typeguard) check
    ],
)
def test_untyped_provider_options_are_checked(provider: str, option: str, why: str) -> None:
    text = HTEX.format(provider=provider, options=f"    {option}")
    message = failure(text)
    key = option.split(":")[0]
    assert f"engine.provider.{key} (line 5)" in message
    assert why in message


def test_launcher_options_are_checked_too() -> None:
    text = HTEX.format(
        provider="LocalProvider", options="    launcher:\n      type: SrunLauncher\n      debug: 7"
    )
    assert "engine.provider.launcher.debug (line 7)" in failure(text)


@pytest.mark.parametrize(
    "option",
    [
        "max_blocks: 0",
        "max_blocks: 4",
        "parallelism: 0.5",
        "parallelism: 1",
        "worker_init: 'module load python'",
        "worker_init: ''",
        "cmd_timeout: 30",
    ],
)
def test_sound_provider_options_still_pass(option: str) -> None:
    load_config_text(HTEX.format(provider="LocalProvider", options=f"    {option}"))
