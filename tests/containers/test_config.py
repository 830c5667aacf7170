"""Container and routing keys in config.yaml, and what `build_engine` makes of them."""

from __future__ import annotations

from typing import Any

import pytest

from endpoint.config import EndpointConfig, load_config_text
from endpoint.engines.build import build_engine, build_engine_from_dict
from endpoint.engines.process import ProcessPoolEngine
from endpoint.engines.routing import RoutingEngine
from endpoint.errors import ConfigError


def config(body: str) -> EndpointConfig:
    cfg = load_config_text("engine:\n" + body)
    assert isinstance(cfg, EndpointConfig)
    return cfg


def error(body: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config_text("engine:\n" + body)
    return str(err.value)


SOFT = """  type: ProcessPoolEngine
  container_type: docker
  container_cmd_options: "-e 'A=b c'"
  container_routing: soft
  max_warm_containers: 2
  container_max_idletime: 30
  container_workers: 2
"""


def test_soft_routing_config_builds_a_routing_engine() -> None:
    cfg = config(SOFT)
    spec = cfg.engine.engine_spec()
    assert spec["container_routing"] == "soft" and spec["max_warm_containers"] == 2
    built = build_engine(cfg.engine)
    assert isinstance(built, RoutingEngine)
    assert built.settings.max_warm == 2 and built.settings.max_idletime == 30.0
    assert built.factory.workers == 2 and built.factory.default_image is None
    # No container_uri: the default pool runs outside containers.
    assert isinstance(built.default, ProcessPoolEngine) and built.default.container is None
    pool = built.factory.build("img:1", "pool9")
    assert isinstance(pool, ProcessPoolEngine) and pool.max_workers == 2
    assert pool.container is not None and pool.container.image == "img:1"
    assert pool.container.options == ("-e", "A=b c")
    status = built.status()["containers"]
    assert status["container_routing"] == "soft" and status["max_warm_containers"] == 2


def test_gce_pools_are_one_block_each() -> None:
    built = build_engine_from_dict(
        {
            "type": "GlobusComputeEngine",
            "container_type": "podman",
            "container_uri": "default:1",
            "container_routing": "hard",
            "container_images": ["a:1", "b:1"],
            "provider": {"type": "LocalProvider", "init_blocks": 0, "max_blocks": 4},
            "max_workers_per_node": 8,
        }
    )
    assert isinstance(built, RoutingEngine) and built.factory.default_image == "default:1"
    assert built.settings.images == ("a:1", "b:1") and built.settings.budget == 2
    pool: Any = built.factory.build("a:1", "pool1")
    provider = pool.executor.provider
    assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (1, 1, 1)
    assert pool.executor.max_workers_per_node == 1 and pool.container.image == "a:1"
    assert pool.label == "GlobusComputeEngine-pool1"
    for engine in (pool, built.default):
        engine.shutdown(wait=False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "  type: ProcessPoolEngine\n  max_warm_containers: 2\n",
            "engine.max_warm_containers (line 3): has no effect without container_routing",
        ),
        (
            "  type: ProcessPoolEngine\n  container_routing: soft\n",
            "engine.container_routing (line 3): needs an image-based container_type",
        ),
        (
            "  container_type: custom\n  container_cmd_options: x {EXECUTOR_LAUNCH_CMD}\n"
            "  container_routing: soft\n",
            "engine.container_routing (line 4): needs an image-based container_type",
        ),
        (
            "  container_type: docker\n  container_routing: hard\n",
            "engine.container_routing (line 3): hard needs container_images",
        ),
        (
            "  container_type: docker\n  container_routing: hard\n  container_images: [a]\n"
            "  max_warm_containers: 4\n",
            "engine.max_warm_containers (line 5): has no effect with container_routing: hard",
        ),
        (
            "  container_type: docker\n  container_routing: soft\n  container_images: [a, a]\n",
            "engine.container_images (line 4): lists an image more than once",
        ),
        (
            "  container_type: docker\n  container_routing: sometimes\n",
            "engine.container_routing (line 3): Input should be 'soft' or 'hard'",
        ),
        (
            "  type: ProcessPoolEngine\n  container_type: docker\n  container_uri: i\n"
            '  container_cmd_options: "-e \'A=b"\n',
            "engine.container_cmd_options (line 5): cannot be parsed as shell words",
        ),
        (
            "  type: GlobusMPIEngine\n  container_type: docker\n  container_routing: soft\n",
            "engine.container_routing (line 4): not supported on GlobusMPIEngine",
        ),
        (
            "  type: ThreadPoolEngine\n  container_routing: soft\n",
            "engine.container_routing (line 3): an option of GlobusComputeEngine, not of"
            " ThreadPoolEngine",
        ),
        (
            "  type: ProcessPoolEngine\n  container_type: docker\n",
            "engine.container_type (line 3): docker needs container_uri",
        ),
    ],
)
def test_bad_container_settings_name_the_key_and_line(body: str, message: str) -> None:
    assert message in error(body)


def test_routing_lets_the_default_pool_run_without_an_image() -> None:
    cfg = config("  container_type: apptainer\n  container_routing: soft\n")
    assert cfg.engine.engine_spec()["container_routing"] == "soft"


def test_none_strings_mean_unset() -> None:
    cfg = config("  type: ProcessPoolEngine\n  container_type: None\n  container_routing: None\n")
    assert "container_routing" not in cfg.engine.engine_spec()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"container_routing": "soft"}, "needs an image-based container_type"),
        ({"max_warm_containers": 4}, "no effect without container_routing"),
        ({"container_routing": "hard", "container_type": "docker"}, "needs container_images"),
        (
            {"container_routing": "soft", "container_type": "docker", "container_workers": 0},
            r"engine\.container_workers: Input should be greater than or equal to 1",
        ),
        (
            {"container_routing": "bad", "container_type": "docker"},
            r"engine\.container_routing: Input should be 'soft' or 'hard'",
        ),
    ],
)
def test_engines_from_python_get_the_same_routing_checks(
    options: dict[str, Any], message: str
) -> None:
    # build_engine_from_dict validates through the config's own model, messages and all.
    with pytest.raises(ConfigError, match=message):
        build_engine_from_dict({"type": "ProcessPoolEngine", **options})


def test_thread_engines_cannot_route() -> None:
    with pytest.raises(
        ConfigError, match=r"engine\.container_routing: an option of GlobusComputeEngine"
    ):
        build_engine_from_dict({"type": "ThreadPoolEngine", "container_routing": "soft"})
