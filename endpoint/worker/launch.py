"""Start Parsl's worker pool with the Python that ``worker_init`` chose (issue 14).

Run by the endpoint's own Python on the worker's node, after the provider ran
``worker_init``: ``python -m endpoint.worker.launch PY_MINOR PARSL DILL POOL_ARGS...``.

As with the official endpoint, the environment ``worker_init`` leaves wins: if it puts a
``process_worker_pool.py`` on PATH (a venv or conda env with Parsl installed, activated or
module-loaded), the Python beside that script runs the workers, so tasks import that
environment's packages. That Python is first checked (same Python minor, Parsl and dill, and
this endpoint's worker side, the `compute-endpoint-worker` package, of this endpoint's
version); otherwise this exits 3 with a message naming both sides' versions and the command
that fixes it, so the block fails at once and its tasks fail with that message instead of
workers dying later as a bare WorkerLost. Without such a script on PATH, this endpoint's own
Python runs the workers. Only the standard library (and this package's version) is used here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import endpoint

POOL_MODULE = "parsl.executors.high_throughput.process_worker_pool"
EXIT_MISMATCH = 3
#: The distribution holding only the worker side (worker-package/, `make worker-wheel`).
WORKER_DIST = "compute-endpoint-worker"
#: Set by a per-user environment's activation: the Python minor it was built for.
WORKER_PYTHON_ENV = "COMPUTE_ENDPOINT_WORKER_PYTHON"

#: Run by the chosen Python (argv: Python minor, Parsl, dill, endpoint version); prints a JSON
#: list of [what, problem] with what in python, parsl, dill, package. Written for old Pythons
#: too, so that a wrong minor version is reported rather than a syntax error.
PREFLIGHT = """
import json, sys
want_py, want_parsl, want_dill, want_ep = sys.argv[1:5]
bad = []
have_py = '%d.%d' % sys.version_info[:2]
if have_py != want_py:
    bad.append(['python', 'Python %s (the endpoint runs %s)' % (have_py, want_py)])
try:
    import importlib.metadata as md
    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return 'missing'
except ImportError:
    def version(name):
        return 'unknown'
for name, want in (('parsl', want_parsl), ('dill', want_dill)):
    have = version(name)
    if have != want:
        bad.append([name, '%s %s (the endpoint has %s)' % (name, have, want)])
try:
    import endpoint
    import endpoint.engines.htex.batching
except ImportError as e:
    if getattr(e, 'name', None) == 'endpoint':
        bad.append(['package', "this endpoint's worker package missing (the endpoint has %s)"
                    % want_ep])
    elif getattr(e, 'name', None) not in ('dill', 'parsl'):
        bad.append(['package', "this endpoint's worker package does not import (%r)" % e])
except Exception as e:
    bad.append(['package', "this endpoint's worker package does not import (%r)" % e])
else:
    have = getattr(endpoint, '__version__', 'unknown')
    if have != want_ep:
        bad.append(['package', "this endpoint's worker package %s (the endpoint has %s)"
                    % (have, want_ep)])
print(json.dumps(bad))
"""


def chosen_python() -> str:
    """The Python beside the ``process_worker_pool.py`` on PATH, else this one."""
    script = shutil.which("process_worker_pool.py")
    if script:
        beside = Path(script).parent / "python3"
        if os.access(beside, os.X_OK):
            return str(beside)
    return sys.executable


def problems(python: str, want: list[str]) -> list[tuple[str, str]]:
    """What `python` lacks to run this endpoint's tasks, as (what, problem); [] when nothing."""
    try:
        proc = subprocess.run(
            [python, "-c", PREFLIGHT, *want, endpoint.__version__],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return [("python", f"it does not run ({e})")]
    try:
        found = json.loads(proc.stdout)
    except ValueError:
        found = None
    if proc.returncode != 0 or not isinstance(found, list):
        return [("python", f"it fails to start: {proc.stderr.strip()[-500:]}")]
    return [(str(what), str(text)) for what, text in found]


def worker_wheel() -> Path:
    """Where `make worker-wheel` leaves the worker package when this endpoint runs from source."""
    version = endpoint.__version__
    root = Path(endpoint.__file__).resolve().parents[1]
    return root / "dist" / f"compute_endpoint_worker-{version}-py3-none-any.whl"


def install_command(want: list[str], whats: set[str]) -> str:
    """The pip command that gives the worker's environment what `whats` says it lacks."""
    _, parsl, dill = want
    command = f"pip install parsl=={parsl} dill=={dill}"
    if "package" not in whats:
        return command
    command += f" {WORKER_DIST}=={endpoint.__version__}"
    wheel = worker_wheel()
    if wheel.is_file():
        return f"{command} --find-links {wheel.parent}"
    return (
        f"{command} --find-links DIR (DIR: where `make worker-wheel`, run in this endpoint's "
        "source tree, wrote the wheel of its worker side)"
    )


def fix(want: list[str], found: list[tuple[str, str]]) -> str:
    """The sentence that tells the user how to repair the environment."""
    whats = {what for what, _ in found}
    if "python" in whats:
        # pip cannot change the interpreter: a new environment needs everything.
        everything = install_command(want, {"package"})
        return f"Recreate that environment with Python {want[0]}, then in it {everything}"
    return "In that environment, " + install_command(want, whats)


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("usage: python -m endpoint.worker.launch PY PARSL DILL POOL_ARGS...", file=sys.stderr)
        return 2
    want, pool_args = argv[1:4], argv[4:]
    # A per-user environment (endpoint.manager.userenv) is built for its submitter's Python
    # minor on purpose and says so: its Python is checked against that one instead.
    declared = os.environ.get(WORKER_PYTHON_ENV, "")
    if declared.count(".") == 1 and declared.replace(".", "").isdigit():
        want[0] = declared
    python = chosen_python()
    # Compare folders, not interpreters: a venv's python is often a symlink to the same base
    # interpreter as the endpoint's, yet its folder (pyvenv.cfg) makes it another environment.
    if Path(python).parent.resolve() != Path(sys.executable).parent.resolve():
        found = problems(python, want)
        if found:
            print(
                f"compute-endpoint: the worker Python {python} (from the environment worker_init "
                f"set up) cannot run this endpoint's tasks: {'; '.join(t for _, t in found)}. "
                f"{fix(want, found)}; or remove worker_init's environment to use the endpoint's "
                "own Python.",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_MISMATCH
    os.execv(python, [python, "-m", POOL_MODULE, *pool_args])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
