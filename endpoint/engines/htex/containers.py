"""GlobusComputeEngine's worker pools inside containers.

Every block's worker pool runs as ``RUNTIME ... IMAGE python3 RUN_DIR/worker-overlay/code-H/
endpoint/containers/entry.py --first PIN [--last DEPS] parsl.executors.high_throughput.
process_worker_pool ARGS`` (see `endpoint.containers.argv` for the runtime part,
`endpoint.containers.entry` for why the entry module, and `endpoint.containers.overlay` for
the trees under the run dir). The image needs only a ``python3`` of the endpoint's minor
version: this endpoint's worker code, Parsl and dill come from the bind-mounted run dir,
ahead of anything the image has (an image built with ``pip install
globus-compute-endpoint`` keeps its own packages for its functions, but runs our Parsl and
dill), and Parsl's other dependencies come from there too when the image lacks them. (A
``custom`` template chooses its own mounts, and a ``launch_cmd`` of the user's own its own
command: both still start ``python3 -m endpoint.containers.entry`` from the image.)
Around that:

* **Image check**: with a LocalProvider the blocks run on this host, so a missing image is
  found (and pulled, if it can be) before any block starts, and its Python is asked for once
  (`endpoint.containers.imageinfo`): a Python minor other than the endpoint's fails the
  engine's tasks at once with a version mismatch, and an image on another platform gets no
  compiled dependencies from this host. On a batch provider the image lives where the jobs
  run and only the version probe (or a failing block) can tell.
* **Version probe**: the first Parsl task the engine sends runs `versions.probe` in the
  container; tasks wait until its answer matches the endpoint. Parsl's own check (which
  kills the interchange on a Python or Parsl mismatch) is turned off in favour of this one,
  because it reports the difference as a lost executor rather than as a task error.
* **Cleanup**: containers are labelled per engine, and any left when the engine stops (a
  runtime CLI killed by SIGKILL leaves its container running) are removed.
"""

from __future__ import annotations

import logging
import shlex
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from endpoint.containers.argv import escape_braces, launch_template
from endpoint.containers.clients import client_for, ensure_image
from endpoint.containers.imageinfo import ImageInfo, image_info
from endpoint.containers.overlay import ensure_overlay, entry_words, host_platform, overlay_root
from endpoint.containers.spec import POOL_LABEL, ContainerSpec, LaunchContext
from endpoint.containers.versions import PARSL_KEYS, PROBE, local_versions, mismatch
from endpoint.errors import ContainerError

log = logging.getLogger(__name__)

#: Once a worker pool has connected, how long its answer to the version probe may take.
PROBE_TIMEOUT_S = 60.0
#: Parsl formats its launch command twice (settings, then each block's id).
_PARSL_FORMAT_PASSES = 2
#: How `htex.config.container_worker_launch_cmd` starts the pool; replaced by the overlay's
#: entry. A ``launch_cmd`` of the user's own is left alone (and needs our package).
_PACKAGED_ENTRY = "python3 -m endpoint.containers.entry "

#: (mismatch, failure) -> None, called from Parsl's result thread: a version mismatch, or
#: the exception that kept the probe from answering (often Parsl's bad state), or neither.
Verdict = Callable[[str | None, BaseException | None], None]


class ContainerWorkers:
    """The container side of one GlobusComputeEngine (one image)."""

    def __init__(self, spec: ContainerSpec, inner_command: str) -> None:
        self.spec = spec
        self.inner_command = inner_command  # Parsl's worker template, run in the container
        self.pool_id = ""
        self.connected_at: float | None = None  # first manager seen, for the probe deadline
        # The overlay runs the pool wherever the run dir is surely mounted at the same path;
        # a custom template decides its own mounts, so its image still needs our package.
        self.lent = spec.runtime != "custom" and inner_command.startswith(_PACKAGED_ENTRY)
        self.known_problem: str | None = None  # found before any block started

    def prepare(self, executor: Any, run_dir: Path, label: str) -> None:
        """Wrap the executor's worker command; raises ContainerError for a missing image or
        one whose python3 does not run."""
        from parsl.providers import LocalProvider

        self.pool_id = f"{label}-{uuid.uuid4().hex[:8]}"
        base = Path(run_dir).resolve()
        info = None
        if self.spec.image and isinstance(executor.provider, LocalProvider):
            info = self._check_image(base)
        if self.known_problem is not None:
            # No block could serve; starting one would only leave a container being
            # created while the engine already answers every task with the mismatch.
            provider = executor.provider
            provider.init_blocks = provider.min_blocks = provider.max_blocks = 0
        command = self._overlay_command(base, info) if self.lent else self.inner_command
        lent = (str(overlay_root(base)),) if self.lent else ()
        ctx = LaunchContext(run_dir=str(base), labels={POOL_LABEL: self.pool_id}, read_only=lent)
        executor.launch_cmd = launch_template(self.spec, ctx, command, _PARSL_FORMAT_PASSES)
        executor._check_python_mismatch = False  # ours (the probe) says what to rebuild
        log.debug("%s: worker command %s", label, executor.launch_cmd)

    def _check_image(self, run_dir: Path) -> ImageInfo | None:
        """(LocalProvider) The image is here, and what its Python is when we lend to it."""
        assert self.spec.image is not None
        client = client_for(self.spec)
        ensure_image(client, self.spec.image)
        if not self.lent:
            return None
        info = image_info(self.spec, client, run_dir, overlay_root(run_dir) / "images")
        self.known_problem = self._python_problem(info)
        return info

    def _overlay_command(self, run_dir: Path, info: ImageInfo | None) -> str:
        """The pool's command with the overlay's entry in place of the packaged one."""
        # Compiled dependencies from this host load only on the same platform; an image
        # not asked (batch providers) is assumed to run where the endpoint's Python does.
        same = info is None or info.platform == host_platform()
        if not same:
            assert info is not None
            log.info(
                "%s runs on %s, not %s like this host: Parsl's dependencies must come from"
                " the image",
                self.spec.describe(),
                info.platform.describe(),
                host_platform().describe(),
            )
        try:
            overlay = ensure_overlay(run_dir, with_deps=same)
        except OSError as e:
            raise ContainerError(
                f"cannot write what {self.spec.describe()} is lent under {run_dir}: {e}"
            ) from e
        words = [escape_braces(shlex.quote(w), _PARSL_FORMAT_PASSES) for w in entry_words(overlay)]
        return " ".join(words) + " " + self.inner_command.removeprefix(_PACKAGED_ENTRY)

    def _python_problem(self, info: ImageInfo) -> str | None:
        ours = local_versions()
        theirs = {"python": info.python}
        return mismatch(ours, theirs, ("python",), self.spec.describe(), lent=True)

    def send_probe(self, executor: Any, verdict: Verdict) -> None:
        if self.known_problem is not None:
            verdict(self.known_problem, None)
            return
        context = {"task_executor": {"f": PROBE, "a": (), "k": {}}}
        future = executor.submit_payload(context, b"")
        future.add_done_callback(lambda done: self._judge(done, verdict))

    def _judge(self, future: Any, verdict: Verdict) -> None:
        try:
            theirs = future.result()
        except BaseException as e:
            verdict(None, e)
            return
        found = mismatch(local_versions(), theirs, PARSL_KEYS, self.spec.describe(), lent=self.lent)
        verdict(found, None)

    def startup_hint(self) -> str:
        """What to check when the pool never answered (appended to Parsl's reason)."""
        if self.lent:
            ours = local_versions()
            return (
                f" (in {self.spec.describe()}: the image needs python3 {ours['python']} on its"
                " PATH, and Parsl's dependencies (pyzmq, psutil, ...) unless it runs on this"
                " host's platform; the endpoint lends the rest through its run dir, which must"
                " be mounted at the same path)"
            )
        return (
            f" (in {self.spec.describe()}: the image needs python3 on PATH with"
            " container-compute-endpoint installed, the same version as the endpoint)"
        )

    def probe_overdue(self, connected: bool) -> bool:
        """True once a pool has been connected for `PROBE_TIMEOUT_S` without an answer."""
        if not connected:
            return False
        if self.connected_at is None:
            self.connected_at = time.monotonic()
        return time.monotonic() - self.connected_at > PROBE_TIMEOUT_S

    def cleanup(self) -> None:
        if not self.pool_id:
            return
        try:
            removed = client_for(self.spec).remove_labelled(POOL_LABEL, self.pool_id)
        except Exception as e:  # best effort; --rm removes them once their pool exits
            log.debug("cleanup of %s containers failed: %s", self.pool_id, e)
            return
        if removed:
            # Usually containers still being removed by --rm as the blocks stop.
            log.debug("removed %d leftover container(s) of %s", removed, self.pool_id)
