"""GlobusComputeEngine's worker pools inside containers.

Every block's worker pool runs as ``RUNTIME ... IMAGE python3 -m endpoint.containers.entry
parsl.executors.high_throughput.process_worker_pool ARGS`` (see `endpoint.containers.argv`
for the runtime part and `endpoint.containers.entry` for why the entry module). Around that:

* **Image check**: with a LocalProvider the blocks run on this host, so a missing image is
  found (and pulled, if it can be) before any block starts. On a batch provider the image
  lives where the jobs run and only a failing block can tell.
* **Version probe**: the first Parsl task the engine sends runs `versions.probe` in the
  container; tasks wait until its answer matches the endpoint. Parsl's own check (which
  kills the interchange on a Python or Parsl mismatch) is turned off in favour of this one,
  because it reports the difference as a lost executor rather than as a task error.
* **Cleanup**: containers are labelled per engine, and any left when the engine stops (a
  runtime CLI killed by SIGKILL leaves its container running) are removed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from endpoint.containers.argv import launch_template
from endpoint.containers.clients import client_for, ensure_image
from endpoint.containers.spec import POOL_LABEL, ContainerSpec, LaunchContext
from endpoint.containers.versions import PARSL_KEYS, PROBE, local_versions, mismatch

log = logging.getLogger(__name__)

#: Once a worker pool has connected, how long its answer to the version probe may take.
PROBE_TIMEOUT_S = 60.0
#: Parsl formats its launch command twice (settings, then each block's id).
_PARSL_FORMAT_PASSES = 2

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

    def prepare(self, executor: Any, run_dir: Path, label: str) -> None:
        """Wrap the executor's worker command; raises ContainerError for a missing image."""
        from parsl.providers import LocalProvider

        self.pool_id = f"{label}-{uuid.uuid4().hex[:8]}"
        ctx = LaunchContext(run_dir=str(Path(run_dir).resolve()), labels={POOL_LABEL: self.pool_id})
        executor.launch_cmd = launch_template(
            self.spec, ctx, self.inner_command, _PARSL_FORMAT_PASSES
        )
        executor._check_python_mismatch = False  # ours (the probe) says what to rebuild
        log.debug("%s: worker command %s", label, executor.launch_cmd)
        if self.spec.image and isinstance(executor.provider, LocalProvider):
            ensure_image(client_for(self.spec), self.spec.image)

    def send_probe(self, executor: Any, verdict: Verdict) -> None:
        context = {"task_executor": {"f": PROBE, "a": (), "k": {}}}
        future = executor.submit_payload(context, b"")
        future.add_done_callback(lambda done: self._judge(done, verdict))

    def _judge(self, future: Any, verdict: Verdict) -> None:
        try:
            theirs = future.result()
        except BaseException as e:
            verdict(None, e)
            return
        verdict(mismatch(local_versions(), theirs, PARSL_KEYS, self.spec.describe()), None)

    def startup_hint(self) -> str:
        """What to check when the pool never answered (appended to Parsl's reason)."""
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
