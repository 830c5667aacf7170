"""How ProcessPoolEngine starts one worker process: on this host, or inside a container.

Both launchers speak the same worker protocol (`endpoint.worker`); they differ in where the
process runs and how its end of the socket pair reaches it:

`LocalLauncher`
    ``python -P -m endpoint.worker --fd N``: the socket is inherited as file descriptor N.
`ContainerLauncher`
    ``docker run -i ... IMAGE python3 -m endpoint.containers.worker``: the runtime's CLI gets
    the socket as its stdin and stdout and relays them to the worker (podman hands the
    socket straight in). The worker's hello carries its versions, which are checked here.

Each launcher also says what a worker's exit status means (`LocalLauncher.describe_exit`):
a local worker's SIGKILL is a negative return code, a container's is the runtime CLI's
``128 + 9``. Either may be the out-of-memory killer (the kernel's, or the container's memory
limit), and the message says so; by the time the CLI exits, ``--rm`` has removed the
container, so its ``OOMKilled`` flag can no longer be read.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import endpoint
from endpoint.containers.argv import launch_argv
from endpoint.containers.clients import client_for, ensure_image
from endpoint.containers.spec import POOL_LABEL, ContainerSpec, LaunchContext
from endpoint.containers.versions import PROCESS_KEYS, local_versions, mismatch

log = logging.getLogger(__name__)

#: The interpreter in a worker image (its venv's ``bin`` comes first on PATH).
CONTAINER_PYTHON = "python3"
#: What a SIGKILL nobody asked for most often is, and what to do about it.
OOM_HINT = "possibly by the out-of-memory killer"
_LOCAL_OOM = "(the task may have run out of memory)"
_CONTAINER_OOM = "(the task may have run out of memory: check the container's memory limit)"


class LocalLauncher:
    """Worker processes on this host, run by this interpreter."""

    def __init__(self, env: Callable[[], dict[str, str]] = lambda: worker_env()) -> None:
        self._env = env

    def prepare(self, run_dir: Path, label: str) -> None:
        """Check what workers need before the first starts (nothing, here)."""

    def spawn(
        self, child: socket.socket, options_json: str, max_tasks: int | None, cwd: str
    ) -> subprocess.Popen[bytes]:
        # -P: no script or cwd directory on sys.path, so nothing there can shadow a module.
        cmd = [sys.executable, "-P", "-m", "endpoint.worker", "--fd", str(child.fileno())]
        cmd += ["--options", options_json, *_max_tasks(max_tasks)]
        return subprocess.Popen(
            cmd,
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            env=self._env(),
            cwd=cwd,
        )

    def check_hello(self, hello: bytes) -> str | None:
        """Why a worker whose hello is ``hello`` cannot serve this endpoint, or None."""
        return None

    def describe_exit(self, returncode: int | None) -> str:
        """How a worker ended, for "worker process PID ...": its code, signal, likely cause."""
        if returncode is None:
            return "stopped responding"
        if returncode < 0:
            return f"was {killed_by(-returncode, _LOCAL_OOM)}"
        return f"exited with code {returncode}"

    def startup_hint(self) -> str:
        """What to look at when workers keep dying before their hello."""
        return ""

    def cleanup(self) -> None:
        """Remove whatever the workers may have left behind."""


class ContainerLauncher(LocalLauncher):
    """Each worker process in its own container of ``spec``'s image."""

    def __init__(self, spec: ContainerSpec) -> None:
        super().__init__()
        self.spec = spec
        self._ctx: LaunchContext | None = None
        self._pool_id = ""

    def prepare(self, run_dir: Path, label: str) -> None:
        """Raises ImageNotFound / ContainerRuntimeMissing when no worker could start."""
        # One label value per engine instance: cleanup must never touch another pool's.
        self._pool_id = f"{label}-{uuid.uuid4().hex[:8]}"
        self._ctx = LaunchContext(
            run_dir=str(Path(run_dir).resolve()), stdio=True, labels={POOL_LABEL: self._pool_id}
        )
        if self.spec.image:
            ensure_image(client_for(self.spec), self.spec.image)

    def spawn(
        self, child: socket.socket, options_json: str, max_tasks: int | None, cwd: str
    ) -> subprocess.Popen[bytes]:
        assert self._ctx is not None, "prepare() first"
        command = [CONTAINER_PYTHON, "-m", "endpoint.containers.worker", "--options", options_json]
        argv = launch_argv(self.spec, self._ctx, [*command, *_max_tasks(max_tasks)])
        fd = child.fileno()
        return subprocess.Popen(argv, stdin=fd, stdout=fd, cwd=cwd)

    def check_hello(self, hello: bytes) -> str | None:
        try:
            theirs = json.loads(hello)
        except ValueError:
            theirs = hello[:200]
        return mismatch(local_versions(), theirs, PROCESS_KEYS, self.spec.describe())

    def describe_exit(self, returncode: int | None) -> str:
        # The runtime's CLI reports the container's process killed by signal N as 128 + N
        # (docker, podman; apptainer and shells pass the same convention on).
        text = super().describe_exit(returncode)
        if returncode is not None and _is_signal(returncode - 128):
            how = killed_by(returncode - 128, _CONTAINER_OOM)
            text += f": the process in its container was {how}"
        return text

    def startup_hint(self) -> str:
        return (
            f" (in {self.spec.describe()}: the image needs {CONTAINER_PYTHON} on PATH with"
            " container-compute-endpoint installed; the runtime's messages are in the"
            " endpoint log)"
        )

    def cleanup(self) -> None:
        if not self._pool_id:
            return
        try:
            client_for(self.spec).remove_labelled(POOL_LABEL, self._pool_id)
        except Exception as e:  # best effort: --rm removes them anyway when they exit
            log.debug("cleanup of %s containers failed: %s", self._pool_id, e)


def killed_by(signum: int, oom_detail: str = "") -> str:
    """``killed by SIGKILL (signal 9), possibly by the out-of-memory killer OOM_DETAIL``."""
    if _is_signal(signum):
        text = f"killed by {signal.Signals(signum).name} (signal {signum})"
    else:
        text = f"killed by signal {signum}"
    if signum != signal.SIGKILL:
        return text
    return f"{text}, {OOM_HINT} {oom_detail}".rstrip()


def _is_signal(signum: int) -> bool:
    try:
        signal.Signals(signum)
    except ValueError:
        return False
    return True


def _max_tasks(max_tasks: int | None) -> list[str]:
    return [] if max_tasks is None else ["--max-tasks", str(max_tasks)]


def worker_env() -> dict[str, str]:
    # Workers import `endpoint` the way this process did, installed or not.
    env = dict(os.environ)
    root = str(Path(endpoint.__file__).resolve().parent.parent)
    paths = env.get("PYTHONPATH", "").split(os.pathsep) if env.get("PYTHONPATH") else []
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env
