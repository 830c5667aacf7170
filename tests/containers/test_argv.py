"""Container launch commands: every runtime's argv, quoting, custom templates, Parsl's template.

Pure functions; no runtime is needed (apptainer and singularity cannot be installed here, so
their behaviour is pinned by these argv checks).
"""

from __future__ import annotations

import os
import shlex

import pytest

from endpoint.containers.argv import escape_braces, launch_argv, launch_template
from endpoint.containers.spec import (
    POOL_LABEL,
    ContainerSpec,
    LaunchContext,
    check_image,
    container_spec,
    parse_options,
)
from endpoint.errors import ConfigError

RUN_DIR = "/home/u/.globus_compute/ep"
CMD = ["python3", "-m", "endpoint.containers.worker", "--options", '{"a": "b c"}']
CTX = LaunchContext(run_dir=RUN_DIR, forward_env=(), user=None)

# Parsl's HTEX worker command, shortened; it is formatted twice (settings, then block id).
PARSL = "python3 -m pool -a {addresses} --cert_dir {cert_dir} --block_id={{block_id}}"
PARSL_FIELDS = {"addresses": "127.0.0.1", "cert_dir": RUN_DIR + "/certs"}


def spec(runtime: str, options: str = "", image: str | None = "img:1") -> ContainerSpec:
    built = container_spec(runtime, image, options or None)
    assert built is not None
    return built


def parsl_argv(template: str) -> list[str]:
    """What the provider's shell runs once Parsl has filled in the template twice."""
    return shlex.split(template.format(**PARSL_FIELDS).format(block_id=7))


# ---- docker family -------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["docker", "podman", "podman-hpc"])
def test_docker_family_argv(runtime: str) -> None:
    argv = launch_argv(spec(runtime, "-e 'A=b c' --gpus all"), CTX, CMD)
    assert argv == [
        runtime,
        "run",
        "--rm",
        "--network",
        "host",
        "-v",
        f"{RUN_DIR}:{RUN_DIR}",
        "-w",
        RUN_DIR,
        "-e",
        "A=b c",
        "--gpus",
        "all",
        "img:1",
        *CMD,
    ]


@pytest.mark.parametrize("runtime", ["docker", "podman", "podman-hpc"])
def test_no_tty_ever_and_stdin_only_for_stdio_workers(runtime: str) -> None:
    batch = launch_argv(spec(runtime), CTX, CMD)
    ctx = LaunchContext(RUN_DIR, stdio=True, forward_env=(), user=None)
    stdio = launch_argv(spec(runtime), ctx, CMD)
    for argv in (batch, stdio):
        assert not {"-t", "--tty", "-it", "-ti"} & set(argv)
    assert "-i" not in batch and "-i" in stdio
    # Results travel on stdout: they must not also be written to the runtime's log files.
    driver = stdio[stdio.index("--log-driver") + 1]
    assert driver == ("passthrough" if runtime == "podman" else "none")


def test_a_chosen_network_is_kept() -> None:
    for options in ("--network=bridge", "--net mynet", "--network mynet"):
        argv = launch_argv(spec("docker", options), CTX, CMD)
        assert "host" not in argv
        assert argv.count("--network") + argv.count("--net") <= 1


def test_docker_runs_workers_as_the_endpoint_user_unless_told_otherwise() -> None:
    ctx = LaunchContext(RUN_DIR, forward_env=(), user="1000:100")
    argv = launch_argv(spec("docker"), ctx, CMD)
    assert argv[argv.index("--user") + 1] == "1000:100"
    for options in ("--user 0", "-u 5:5", "-u5", "--user=nobody", "--userns=host"):
        assert launch_argv(spec("docker", options), ctx, CMD).count("--user") <= 1
        assert "1000:100" not in launch_argv(spec("docker", options), ctx, CMD)
    # Rootless podman maps the endpoint's user to the container's root already.
    assert "--user" not in launch_argv(spec("podman"), ctx, CMD)
    assert "--user" not in launch_argv(spec("apptainer"), ctx, CMD)
    assert LaunchContext(RUN_DIR).user == f"{os.getuid()}:{os.getgid()}"


def test_labels_and_forwarded_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GC_TASK_TIMEOUT", "5")
    ctx = LaunchContext(RUN_DIR, labels={POOL_LABEL: "pool-1"}, user=None)
    argv = launch_argv(spec("podman"), ctx, CMD)
    assert argv[argv.index("--label") + 1] == f"{POOL_LABEL}=pool-1"
    # The name alone: the runtime copies the value, which never appears on a command line.
    assert argv[argv.index("-e") + 1] == "GC_TASK_TIMEOUT"
    monkeypatch.delenv("GC_TASK_TIMEOUT")
    assert "-e" not in launch_argv(spec("podman"), ctx, CMD)


def test_user_options_come_after_ours_so_theirs_win() -> None:
    argv = launch_argv(spec("docker", "-w /data"), CTX, CMD)
    assert argv.index("/data") > argv.index(RUN_DIR)


def test_a_run_dir_that_cannot_be_mounted_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot be mounted"):
        launch_argv(spec("docker"), LaunchContext("/a:b"), CMD)


# ---- apptainer family ----------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_apptainer_family_binds_the_run_dir_and_uses_exec(runtime: str) -> None:
    argv = launch_argv(spec(runtime, "-H /home/$USER --nv", "/img/w.sif"), CTX, CMD)
    assert argv == [
        runtime,
        "exec",
        "--bind",
        f"{RUN_DIR}:{RUN_DIR}",
        "--pwd",
        RUN_DIR,
        "-H",
        "/home/$USER",  # for the job's shell (Parsl) or literal (argv): never expanded by us
        "--nv",
        "/img/w.sif",
        *CMD,
    ]
    assert not {"-t", "--tty", "run", "shell"} & set(argv)


def test_apptainer_ignores_stdio_flags_it_does_not_need() -> None:
    ctx = LaunchContext(RUN_DIR, stdio=True, labels={POOL_LABEL: "x"}, forward_env=(), user=None)
    argv = launch_argv(spec("apptainer", image="docker://repo/img:1"), ctx, CMD)
    assert (
        "-i" not in argv and "--label" not in argv and argv[-len(CMD) - 1] == "docker://repo/img:1"
    )


# ---- custom ---------------------------------------------------------------------------------


def test_custom_substitutes_only_its_two_placeholders() -> None:
    template = (
        "shifter --volume={EXECUTOR_RUNDIR}:/run --env X='{not_ours} ${HOME}'"
        " --image={EXECUTOR_IMAGE} {EXECUTOR_LAUNCH_CMD}"
    )
    argv = launch_argv(spec("custom", template, image=None), CTX, CMD)
    assert argv == [
        "shifter",
        f"--volume={RUN_DIR}:/run",
        "--env",
        "X={not_ours} ${HOME}",
        "--image={EXECUTOR_IMAGE}",  # not a placeholder of ours: left as written
        *CMD,
    ]


def test_custom_placeholder_inside_a_word_gets_the_command_quoted() -> None:
    template = "sh -c 'cd {EXECUTOR_RUNDIR} && exec {EXECUTOR_LAUNCH_CMD}'"
    argv = launch_argv(spec("custom", template, image=None), CTX, CMD)
    assert argv[:2] == ["sh", "-c"]
    assert argv[2] == f"cd {RUN_DIR} && exec {shlex.join(CMD)}"
    assert shlex.split(argv[2].split("&& exec ", 1)[1]) == CMD


def test_custom_without_the_launch_placeholder_is_refused() -> None:
    with pytest.raises(ConfigError, match="EXECUTOR_LAUNCH_CMD"):
        container_spec("custom", None, "docker run img")


# ---- options parsing -----------------------------------------------------------------------


def test_options_are_split_like_a_shell_and_quotes_survive() -> None:
    assert parse_options("-e 'A=b c' -e B=\"d e\" -v /x:/y") == (
        "-e",
        "A=b c",
        "-e",
        "B=d e",
        "-v",
        "/x:/y",
    )
    assert parse_options(None) == () and parse_options("") == ()
    with pytest.raises(ConfigError, match="shell words"):
        parse_options("-e 'A=b")


def test_container_spec_rules() -> None:
    assert container_spec(None) is None and container_spec("None") is None
    with pytest.raises(ConfigError, match="needs container_uri"):
        container_spec("docker")
    with pytest.raises(ConfigError, match="not one of"):
        container_spec("shifter", "img")
    with pytest.raises(ConfigError, match="no effect without container_type"):
        container_spec(None, "img")
    assert spec("docker").with_image("other:2").image == "other:2"


# ---- Parsl's command template --------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "options"),
    [
        ("docker", "-e 'A=b c' --label x={literal} -e 'P=50%'"),
        ("podman", "--env 'J={\"k\": [1, 2]}'"),
        ("apptainer", "-H '/home/a b' --env 'X={y}'"),
        ("custom", "srun --export=ALL sh -c 'cd {EXECUTOR_RUNDIR} && {EXECUTOR_LAUNCH_CMD}'"),
        ("custom", "wrap -v '{EXECUTOR_RUNDIR}:{x}' {EXECUTOR_LAUNCH_CMD}"),
    ],
)
def test_parsl_template_fills_only_parsl_fields_and_keeps_our_words(
    runtime: str, options: str
) -> None:
    container = spec(runtime, options, image=None if runtime == "custom" else "img:1")
    template = launch_template(container, CTX, PARSL, format_passes=2)
    filled = PARSL.format(**PARSL_FIELDS).format(block_id=7)
    expected = launch_argv(container, CTX, shlex.split(filled))
    if runtime == "custom" and "sh -c" in options:
        # The command was substituted inside one word; compare that word's shell meaning.
        assert parsl_argv(template)[:3] == expected[:3]
        assert shlex.split(parsl_argv(template)[-1].split("&& ", 1)[1]) == shlex.split(filled)
    else:
        assert parsl_argv(template) == expected


def test_escape_braces_survives_each_format_pass() -> None:
    text = "{a} {{b}} }{"
    assert escape_braces(text, 1).format() == text
    assert escape_braces(text, 2).format().format() == text


@pytest.mark.parametrize(
    "image", ["--privileged", "-v/:/host", "img 1", "img\n1", "", "x" * 513, "img\x00"]
)
def test_images_that_could_be_read_as_options_are_refused(image: str) -> None:
    with pytest.raises(ConfigError):
        check_image(image)
    with pytest.raises(ConfigError):
        container_spec("docker", image)


@pytest.mark.parametrize(
    "image", ["repo/img:1.2", "127.0.0.1:5000/a/b@sha256:ab12", "/p/w.sif", "docker://a/b:1"]
)
def test_ordinary_image_names_paths_and_uris_pass(image: str) -> None:
    assert check_image(image) == image
