"""`endpoint_setup` and `endpoint_teardown`: the config's shell snippets around a run.

Setup runs before registration and must succeed; teardown runs whenever a setup succeeded and
the endpoint then exits cleanly (the official endpoint only ever ran it from `stop`, and at 4.x
never at all). Both run in `/bin/sh` in the endpoint directory, with the endpoint's name, dir
and (when known) id in the environment so a snippet can tell endpoints apart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from pathlib import Path

from endpoint.errors import SetupFailed

log = logging.getLogger(__name__)

#: Teardown runs inside `stop`'s grace period, so it must not hang it.
TEARDOWN_TIMEOUT_S = 20.0


def _env(ep_dir: Path, endpoint_id: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["GLOBUS_COMPUTE_ENDPOINT_NAME"] = ep_dir.name
    env["GLOBUS_COMPUTE_ENDPOINT_DIR"] = str(ep_dir)
    if endpoint_id:
        env["GLOBUS_COMPUTE_ENDPOINT_ID"] = endpoint_id
    return env


def _run(
    what: str, script: str, ep_dir: Path, endpoint_id: str | None, timeout: float | None
) -> subprocess.CompletedProcess[str]:
    log.info("running %s", what)
    # Its own process group, so an interrupted or timed-out snippet is killed with everything
    # it started, not just the shell.
    proc = subprocess.Popen(
        ["/bin/sh", "-c", script],
        cwd=ep_dir,
        env=_env(ep_dir, endpoint_id),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    for line in output.splitlines():
        log.info("%s: %s", what, line)
    return subprocess.CompletedProcess(proc.args, proc.returncode, output)


def run_setup(script: str | None, ep_dir: Path, endpoint_id: str | None = None) -> bool:
    """Run `endpoint_setup`; True if there was one. SetupFailed (exit 78) on non-zero."""
    if not script:
        return False
    proc = _run("endpoint_setup", script, ep_dir, endpoint_id, None)
    if proc.returncode != 0:
        raise SetupFailed(
            f"endpoint_setup exited with {proc.returncode}", proc.returncode, proc.stdout
        )
    return True


def run_teardown(script: str | None, ep_dir: Path, endpoint_id: str | None = None) -> None:
    """Run `endpoint_teardown`; failures are logged, never raised (the endpoint is stopping)."""
    if not script:
        return
    try:
        proc = _run("endpoint_teardown", script, ep_dir, endpoint_id, TEARDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.error("endpoint_teardown did not finish in %ss; abandoned", TEARDOWN_TIMEOUT_S)
        return
    except OSError as e:
        log.error("endpoint_teardown could not run: %s", e)
        return
    if proc.returncode != 0:
        log.error("endpoint_teardown exited with %s", proc.returncode)
