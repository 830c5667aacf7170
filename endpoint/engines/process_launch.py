"""How ProcessPoolEngine starts one worker process: on this host, or inside a container.

Both launchers speak the same worker protocol (`endpoint.worker`); they differ in where the
process runs and how its end of the socket pair reaches it:

`LocalLauncher`
    ``python -P -m endpoint.worker --fd N``: the socket is inherited as file descriptor N.
`ContainerLauncher`
    ``docker run -i ... -v OVERLAY:OVERLAY:ro ... IMAGE python3 RUN_DIR/worker-overlay/code-H/
    endpoint/containers/entry.py --first PIN endpoint.containers.worker``: the runtime's CLI
    gets the socket as its stdin and stdout and relays them to the worker (podman hands the
    socket straight in). The image needs only a ``python3`` of the endpoint's minor version:
    the worker's code and dill are lent to it through the run dir, read-only, as to a
    GlobusComputeEngine pool (`endpoint.containers.overlay`), so an image built from the
    official docs' recipe or a bare Python runs it. The image's Python is asked once before
    the first worker starts (`endpoint.containers.imageinfo`): another minor fails the pool's
    tasks with a version mismatch instead of workers that never say hello. The worker's
    hello carries its versions, which are checked here. (``custom`` commands choose their own
    mounts, so their image still needs this package: ``python3 -m
    endpoint.containers.worker``.)

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
from endpoint.containers.clients import ContainerClient, client_for, ensure_image
from endpoint.containers.codes import (
    CODE_CONTAINER_FAILED,
    CODE_IMAGE_NOT_FOUND,
    CODE_VERSION_MISMATCH,
)
from endpoint.containers.imageinfo import image_info
from endpoint.containers.overlay import ensure_overlay, entry_words, overlay_root
from endpoint.containers.spec import POOL_LABEL, ContainerSpec, LaunchContext
from endpoint.containers.versions import PROCESS_KEYS, local_versions, mismatch
from endpoint.errors import ContainerError, ImageNotFound, WorkerMismatch

log = logging.getLogger(__name__)

#: The interpreter in a worker image (its venv's ``bin`` comes first on PATH).
CONTAINER_PYTHON = "python3"
#: The worker module, run by the lent entry (or, for ``custom``, from the image's package).
WORKER_MODULE = "endpoint.containers.worker"
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
        # Every runtime but ``custom`` mounts the run dir at the same path, so the worker
        # can be lent; a custom command decides its own mounts.
        self.lent = spec.runtime != "custom" and spec.image is not None
        self._head = [CONTAINER_PYTHON, "-m", WORKER_MODULE]

    def prepare(self, run_dir: Path, label: str) -> None:
        """Raises ImageNotFound / ContainerRuntimeMissing when no worker could start,
        WorkerMismatch when the image's Python cannot run this endpoint's tasks."""
        # One label value per engine instance: cleanup must never touch another pool's.
        self._pool_id = f"{label}-{uuid.uuid4().hex[:8]}"
        base = Path(run_dir).resolve()
        lent = (str(overlay_root(base)),) if self.lent else ()
        self._ctx = LaunchContext(
            run_dir=str(base), stdio=True, labels={POOL_LABEL: self._pool_id}, read_only=lent
        )
        if self.spec.image:
            client = client_for(self.spec)
            ensure_image(client, self.spec.image)
            if self.lent:
                self._lend(client, base)

    def _lend(self, client: ContainerClient, run_dir: Path) -> None:
        """Ask the image's Python (once per image), then write what its workers borrow."""
        info = image_info(self.spec, client, run_dir, overlay_root(run_dir) / "images")
        ours = local_versions()
        problem = mismatch(
            ours, {"python": info.python}, ("python",), self.spec.describe(), lent=True
        )
        if problem is not None:
            raise WorkerMismatch(problem)
        try:
            # Of the third-party packages a process worker imports only dill, which is
            # pure Python: no compiled dependencies, so the image's platform does not matter.
            overlay = ensure_overlay(run_dir, with_deps=False)
        except OSError as e:
            raise ContainerError(
                f"cannot write what {self.spec.describe()} is lent under {run_dir}: {e}"
            ) from e
        self._head = [*entry_words(overlay, CONTAINER_PYTHON), WORKER_MODULE]

    def spawn(
        self, child: socket.socket, options_json: str, max_tasks: int | None, cwd: str
    ) -> subprocess.Popen[bytes]:
        fd = child.fileno()
        return subprocess.Popen(self.argv(options_json, max_tasks), stdin=fd, stdout=fd, cwd=cwd)

    def argv(self, options_json: str, max_tasks: int | None) -> list[str]:
        """The runtime command that starts one worker in its container."""
        assert self._ctx is not None, "prepare() first"
        command = [*self._head, "--options", options_json, *_max_tasks(max_tasks)]
        return launch_argv(self.spec, self._ctx, command)

    def check_hello(self, hello: bytes) -> str | None:
        try:
            theirs = json.loads(hello)
        except ValueError:
            theirs = hello[:200]
        where = self.spec.describe()
        return mismatch(local_versions(), theirs, PROCESS_KEYS, where, lent=self.lent)

    def describe_exit(self, returncode: int | None) -> str:
        # The runtime's CLI reports the container's process killed by signal N as 128 + N
        # (docker, podman; apptainer and shells pass the same convention on).
        text = super().describe_exit(returncode)
        if returncode is not None and _is_signal(returncode - 128):
            how = killed_by(returncode - 128, _CONTAINER_OOM)
            text += f": the process in its container was {how}"
        return text

    def startup_hint(self) -> str:
        if self.lent:
            return (
                f" (in {self.spec.describe()}: the image needs {CONTAINER_PYTHON}"
                f" {local_versions()['python']} on its PATH; the endpoint lends the worker its"
                " code and dill through its run dir, which must be mounted at the same path;"
                " the runtime's messages are in the endpoint log)"
            )
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


def failure_code(error: ContainerError) -> str:
    """The error Result code for tasks of a pool whose preparation raised ``error``."""
    if isinstance(error, ImageNotFound):
        return CODE_IMAGE_NOT_FOUND
    if isinstance(error, WorkerMismatch):
        return CODE_VERSION_MISMATCH
    return CODE_CONTAINER_FAILED


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
