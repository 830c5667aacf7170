"""Container launch commands, built as argv lists from a `ContainerSpec`.

One builder per command-line family:

docker, podman, podman-hpc
    ``PROGRAM run --rm [-i --log-driver D] [--network host] [--user UID:GID] -v RUN_DIR:RUN_DIR
    [-v DIR:DIR:ro]... -w RUN_DIR [--label K=V]... [-e NAME]... OPTIONS... IMAGE COMMAND...``
    (``DIR``: what the endpoint lends its workers, under the run dir). Never ``-t``:
    workers run inside batch jobs and pipes, where a TTY only mangles output. ``--network
    host`` is added unless the options choose a network, because Parsl workers must reach the
    interchange on the endpoint host. docker alone gets ``--user`` (the endpoint's ids, unless
    the options name a user): its containers run as the image's user, who cannot use a 0700
    endpoint directory, while rootless podman already maps the endpoint's user to the
    container's root (and ``--user`` would map it away). The user's options come after ours so
    that theirs win.
apptainer, singularity
    ``PROGRAM exec --bind RUN_DIR:RUN_DIR [--bind DIR:DIR:ro]... --pwd RUN_DIR OPTIONS... IMAGE
    COMMAND...``. ``exec``
    rather than ``run``: ``run`` hands the command to the image's runscript as arguments.
    Apptainer never allocates a TTY for ``exec`` and passes the host environment through.
custom
    The options are the whole command. ``{EXECUTOR_RUNDIR}`` is replaced inside any word; a
    word that is exactly ``{EXECUTOR_LAUNCH_CMD}`` becomes the command's words, and a word
    that merely contains it (``sh -c "cd x && {EXECUTOR_LAUNCH_CMD}"``) gets the command
    shell-quoted in its place. No other text is interpreted: other braces stay as written.

`launch_template` renders the same argv as one shell line for Parsl, whose worker command is
a ``str.format`` template run by the provider's job script: our words are shell-quoted and
their braces doubled, so only Parsl's own placeholders are filled in.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from endpoint.containers.spec import (
    APPTAINER_FAMILY,
    DOCKER_FAMILY,
    LAUNCH_CMD_PLACEHOLDER,
    RUNDIR_PLACEHOLDER,
    ContainerSpec,
    LaunchContext,
    check_image,
)
from endpoint.errors import ConfigError

#: Stands for the command while a Parsl template is rendered; shell-safe, so `shlex.join`
#: leaves it unquoted.
_COMMAND_SENTINEL = "__ccep_worker_command_7f3a9c__"
_NETWORK_FLAGS = ("--network", "--net")
_USER_FLAGS = ("-u", "--user", "--userns")


def launch_argv(spec: ContainerSpec, ctx: LaunchContext, command: Sequence[str]) -> list[str]:
    """The argv that runs ``command`` in the container ``spec`` describes."""
    if not command:
        raise ValueError("a container needs a command to run")
    if spec.runtime in DOCKER_FAMILY:
        return _docker_argv(spec, ctx, command)
    if spec.runtime in APPTAINER_FAMILY:
        return _apptainer_argv(spec, ctx, command)
    return _custom_argv(spec, ctx, command)


def launch_template(
    spec: ContainerSpec, ctx: LaunchContext, command_template: str, format_passes: int = 1
) -> str:
    """One shell line for Parsl: the container around Parsl's worker command template.

    ``command_template`` is Parsl's (its ``{placeholders}`` intact, already shell-safe once
    filled in). Everything we add is shell-quoted and its braces escaped for
    ``format_passes`` rounds of ``str.format`` (Parsl's HTEX formats its launch command
    twice: once with its settings, then with each block's id), so only Parsl's fields are
    filled in and ``shlex.split`` of the final line gives back our words unchanged.
    """
    words = []
    for word in launch_argv(spec, ctx, [_COMMAND_SENTINEL]):
        if word == _COMMAND_SENTINEL:
            words.append(command_template)
            continue
        quoted = shlex.quote(word).split(_COMMAND_SENTINEL)
        words.append(command_template.join(escape_braces(p, format_passes) for p in quoted))
    return " ".join(words)


def escape_braces(text: str, format_passes: int = 1) -> str:
    """``text`` such that ``format_passes`` rounds of ``str.format`` give it back."""
    width = 2**format_passes
    return text.replace("{", "{" * width).replace("}", "}" * width)


def _mount(ctx: LaunchContext) -> str:
    return _same_path(ctx.run_dir)


def _same_path(path: str, suffix: str = "") -> str:
    if ":" in path or "," in path:
        # Both runtimes split volume specs on these characters; a bind would silently break.
        raise ConfigError(
            f"the endpoint directory {path!r} cannot be mounted into a container"
            " (it contains ':' or ','); move the endpoint directory"
        )
    return f"{path}:{path}{suffix}"


def _read_only(ctx: LaunchContext, flag: str) -> list[str]:
    """``flag PATH:PATH:ro`` for each read-only directory, after the run dir's own mount
    (docker and podman mount the deeper path over it; apptainer binds in order)."""
    words = []
    for path in ctx.read_only:
        words += [flag, _same_path(path, ":ro")]
    return words


def _names_network(options: Sequence[str]) -> bool:
    return any(o in _NETWORK_FLAGS or o.startswith(("--network=", "--net=")) for o in options)


def _names_user(options: Sequence[str]) -> bool:
    return any(
        o.split("=", 1)[0] in _USER_FLAGS or (o.startswith("-u") and not o.startswith("--"))
        for o in options
    )


def _docker_argv(spec: ContainerSpec, ctx: LaunchContext, command: Sequence[str]) -> list[str]:
    if not spec.image:
        raise ConfigError(f"container_type {spec.runtime} needs container_uri (the image)")
    image = check_image(spec.image)  # again: a spec can be built without container_spec()
    argv = [spec.program, "run", "--rm"]
    if ctx.stdio:
        # Workers answer on stdout: keep it out of the log driver (a copy of every result on
        # disk). Podman can hand our socket to the container itself, skipping its relay.
        driver = "passthrough" if spec.runtime == "podman" else "none"
        argv += ["-i", "--log-driver", driver]
    if not _names_network(spec.options):
        argv += ["--network", "host"]
    if spec.runtime == "docker" and ctx.user and not _names_user(spec.options):
        argv += ["--user", ctx.user]
    argv += ["-v", _mount(ctx), *_read_only(ctx, "-v"), "-w", ctx.run_dir]
    for key, value in sorted(ctx.labels.items()):
        argv += ["--label", f"{key}={value}"]
    for name in ctx.forwarded():
        argv += ["-e", name]  # the runtime copies the value from its own environment
    return [*argv, *spec.options, image, *command]


def _apptainer_argv(spec: ContainerSpec, ctx: LaunchContext, command: Sequence[str]) -> list[str]:
    if not spec.image:
        raise ConfigError(f"container_type {spec.runtime} needs container_uri (the image)")
    image = check_image(spec.image)
    argv = [spec.program, "exec", "--bind", _mount(ctx), *_read_only(ctx, "--bind")]
    argv += ["--pwd", ctx.run_dir]
    return [*argv, *spec.options, image, *command]


def _custom_argv(spec: ContainerSpec, ctx: LaunchContext, command: Sequence[str]) -> list[str]:
    argv: list[str] = []
    for template_word in spec.options:
        # The run dir first: a command word that happens to contain the placeholder text
        # must reach the container as written.
        word = template_word.replace(RUNDIR_PLACEHOLDER, ctx.run_dir)
        if word == LAUNCH_CMD_PLACEHOLDER:
            argv.extend(command)
        elif LAUNCH_CMD_PLACEHOLDER in word:
            argv.append(word.replace(LAUNCH_CMD_PLACEHOLDER, shlex.join(command)))
        else:
            argv.append(word)
    if not any(LAUNCH_CMD_PLACEHOLDER in word for word in spec.options):
        raise ConfigError(f"a custom container command needs {LAUNCH_CMD_PLACEHOLDER}")
    return argv
