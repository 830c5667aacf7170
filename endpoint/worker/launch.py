"""Start Parsl's worker pool with the Python that ``worker_init`` chose (issue 14).

Run by the endpoint's own Python on the worker's node, after the provider ran
``worker_init``: ``python -m endpoint.worker.launch PY_MINOR PARSL DILL POOL_ARGS...``.

As with the official endpoint, the environment ``worker_init`` leaves wins: if it puts a
``process_worker_pool.py`` on PATH (a venv or conda env with Parsl installed, activated or
module-loaded), the Python beside that script runs the workers, so tasks import that
environment's packages. That Python is first checked (same Python minor, Parsl and dill, and
this endpoint's worker package importable); otherwise this exits 3 with a message naming both
sides' versions and the fix, so the block fails at once and its tasks fail with that message
instead of workers dying later as a bare WorkerLost. Without such a script on PATH, this
endpoint's own Python runs the workers. Standard library only until the exec.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

POOL_MODULE = "parsl.executors.high_throughput.process_worker_pool"
EXIT_MISMATCH = 3

#: Run by the chosen Python (argv: Python minor, Parsl, dill); prints what does not match.
PREFLIGHT = """
import sys, importlib.metadata as md
want_py, want_parsl, want_dill = sys.argv[1:4]
bad = []
have_py = '%d.%d' % sys.version_info[:2]
if have_py != want_py:
    bad.append('Python %s (the endpoint runs %s)' % (have_py, want_py))
for name, want in (('parsl', want_parsl), ('dill', want_dill)):
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = 'missing'
    if have != want:
        bad.append('%s %s (the endpoint has %s)' % (name, have, want))
try:
    import endpoint.worker.execute
except Exception as e:
    bad.append('the endpoint worker package does not import (%r)' % e)
print('; '.join(bad))
"""


def chosen_python() -> str:
    """The Python beside the ``process_worker_pool.py`` on PATH, else this one."""
    script = shutil.which("process_worker_pool.py")
    if script:
        beside = Path(script).parent / "python3"
        if os.access(beside, os.X_OK):
            return str(beside)
    return sys.executable


def mismatch(python: str, want: list[str]) -> str:
    """What `python` lacks to run this endpoint's tasks ("" when nothing)."""
    try:
        proc = subprocess.run(
            [python, "-c", PREFLIGHT, *want], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"it does not run ({e})"
    if proc.returncode != 0:
        return f"it fails to start: {proc.stderr.strip()[-500:]}"
    return proc.stdout.strip()


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("usage: python -m endpoint.worker.launch PY PARSL DILL POOL_ARGS...", file=sys.stderr)
        return 2
    want, pool_args = argv[1:4], argv[4:]
    python = chosen_python()
    if Path(python).resolve() != Path(sys.executable).resolve():
        problem = mismatch(python, want)
        if problem:
            print(
                f"compute-endpoint: the worker Python {python} (from the environment worker_init "
                f"set up) cannot run this endpoint's tasks: {problem}. Install the same versions "
                f"there (pip install parsl=={want[1]} dill=={want[2]} and this endpoint's "
                "package), or remove worker_init's environment to use the endpoint's own Python.",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_MISMATCH
    os.execv(python, [python, "-m", POOL_MODULE, *pool_args])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
