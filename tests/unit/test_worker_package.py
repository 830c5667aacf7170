"""compute-endpoint-worker (worker-package/): exactly the modules a Parsl worker imports.

The wheel is built as `make worker-wheel` builds it. Its `endpoint` modules must be the closure
of what a worker runs (`batching.RUNNER`, the name the engine sends Parsl for every task), no
module more and none less; they import nothing outside the standard library but dill; its
pins are the main package's. Then a task runs from the unpacked wheel alone, and the launcher's
preflight (`endpoint.worker.launch`) tells a user whose environment lacks the package which
command installs it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import pickle
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

import endpoint
from endpoint.engines.htex.batching import RUNNER
from endpoint.protocol.messages import Result, unpack_as
from endpoint.worker import launch
from tests.unit.test_engines import ok, submission
from tests.unit.test_layout import MODULES, ROOT, reachable

WORKER_PACKAGE = ROOT / "worker-package"
#: What Parsl's worker imports by name: the module of the runner every task travels in.
ENTRY = RUNNER.rpartition(".")[0]
#: The main package's dependencies the worker needs: Parsl runs the pool, dill the pickles.
PINNED = ("parsl", "dill")


def build_worker_wheel(dest: Path) -> Path:
    """The wheel, built the way `make worker-wheel` does (pip fetches setuptools from PyPI)."""
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest)]
    proc = subprocess.run(
        [*command, str(WORKER_PACKAGE)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (
        f"building the worker wheel failed (pip needs PyPI or a cache for setuptools):\n"
        f"{proc.stdout}\n{proc.stderr}"
    )
    (wheel,) = dest.glob("compute_endpoint_worker-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_worker_wheel(tmp_path_factory.mktemp("worker-wheel"))


def with_parents(module: str) -> set[str]:
    """`module` and the packages whose __init__ importing it runs."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def needed_modules() -> set[str]:
    """Every `endpoint` module a worker loads to run a task (followed transitively)."""
    found = with_parents(ENTRY)
    for module in reachable(ENTRY):
        found |= with_parents(module)
    return found


def wheel_modules(wheel: Path) -> set[str]:
    names = zipfile.ZipFile(wheel).namelist()
    modules = set()
    for name in names:
        if name.endswith(".py"):
            module = name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            modules.add(module)
    return modules


def test_the_wheel_holds_exactly_the_modules_a_worker_imports(wheel: Path) -> None:
    needed = needed_modules()
    assert needed <= MODULES.keys()
    packed = wheel_modules(wheel)
    assert sorted(needed - packed) == [], "a worker imports these, the wheel lacks them"
    assert sorted(packed - needed) == [], "the wheel carries modules no worker imports"
    assert "endpoint.worker.execute" in packed  # the closure really was followed


def test_the_wheel_files_are_the_repository_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith(".py"):
                assert archive.read(name) == (ROOT / name).read_bytes(), name


def third_party_imports(module: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots - set(sys.stdlib_module_names) - {"endpoint"}


def test_the_packaged_modules_import_only_dill_beyond_the_standard_library() -> None:
    found = set().union(*(third_party_imports(m) for m in needed_modules()))
    assert found == {"dill"}


def main_pins(*names: str) -> list[str]:
    """The main package's requirement strings for `names`."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    pins = {}
    for requirement in project["dependencies"]:
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert match is not None, requirement
        pins[match.group().lower()] = requirement
    return sorted(pins[name] for name in names)


def test_the_wheel_has_the_main_version_and_only_its_parsl_and_dill_pins(wheel: Path) -> None:
    (dist,) = importlib.metadata.distributions(path=[str(wheel)])
    assert dist.metadata["Name"] == "compute-endpoint-worker"
    assert dist.version == endpoint.__version__
    assert dist.version == importlib.metadata.version("container-compute-endpoint")
    assert wheel.name == f"compute_endpoint_worker-{endpoint.__version__}-py3-none-any.whl"
    required = sorted(r for r in dist.requires or [] if "extra ==" not in r)
    assert required == main_pins(*PINNED)
    # The official SDK only on request: it brings globus-sdk and pydantic.
    (sdk,) = (r for r in dist.requires or [] if "extra ==" in r)
    assert sdk == f'{main_pins("globus-compute-sdk")[0]}; extra == "sdk"'


#: Runs in a fresh interpreter whose `endpoint` is the unpacked wheel only; prints where
#: every `endpoint` module it loaded came from, and the packed Result.
RUN_FROM_WHEEL = """
import pickle, sys
from endpoint.engines.htex.batching import encode_batch, run_batch
task_id, packed, options = pickle.loads(sys.stdin.buffer.read())
results, _ = run_batch(encode_batch([(task_id, packed, [])]), options)
files = [m.__file__ for name, m in sys.modules.items() if name.split('.')[0] == 'endpoint']
sys.stdout.buffer.write(pickle.dumps((files, results[0])))
"""


def double(x: int) -> int:
    return 2 * x


def site_packages() -> Path:
    """The endpoint's site-packages (dill's home), as a plain path."""
    return Path(str(importlib.metadata.distribution("dill").locate_file("")))


def test_a_task_runs_from_the_unpacked_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    """-S skips the .pth files, so the editable checkout's import hook is not installed and the
    site-packages are a plain path after the unpacked wheel: a module the wheel lacks fails to
    import instead of coming from the repository."""
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    sub = submission(double, 21)
    options = {"endpoint_id": "ep", "run_dir": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-S", "-c", RUN_FROM_WHEEL],
        input=pickle.dumps((sub.task_id, sub.packed_task, options)),
        capture_output=True,
        cwd=tmp_path,
        env={"PYTHONPATH": f"{unpacked}:{site_packages()}", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    files, packed = pickle.loads(proc.stdout)
    assert len(files) == len(wheel_modules(wheel))
    assert [f for f in files if not Path(f).is_relative_to(unpacked)] == []
    assert ok(unpack_as(packed, Result)) == 42


# ---- the launcher's preflight --------------------------------------------------------------


def want() -> list[str]:
    """What the engine passes the launcher: Python minor, Parsl, dill."""
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    return [minor, *(importlib.metadata.version(n) for n in PINNED)]


def bare_venv(root: Path, *paths: Path) -> Path:
    """A venv as `python -m venv` makes it on Linux (python a symlink to the same base Python
    as the endpoint's), seeing `paths` too; its python."""
    venv.create(root, with_pip=False, symlinks=True)
    if paths:
        site_dir = next(root.glob("lib/python*/site-packages"))
        (site_dir / "extra.pth").write_text("".join(f"{p}\n" for p in paths))
    return root / "bin" / "python3"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The preflight (like the pool) sees its working directory: not the checkout's."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("elsewhere")
def test_the_preflight_names_the_worker_package_a_bare_venv_lacks(tmp_path: Path) -> None:
    python = bare_venv(tmp_path / "bare")
    found = launch.problems(str(python), want())
    assert [what for what, _ in found] == ["parsl", "dill", "package"]
    assert found[2][1] == (
        f"this endpoint's worker package missing (the endpoint has {endpoint.__version__})"
    )
    fix = launch.fix(want(), found)
    assert (
        f"pip install parsl=={want()[1]} dill=={want()[2]} "
        f"compute-endpoint-worker=={endpoint.__version__}" in fix
    )


@pytest.mark.usefixtures("elsewhere")
def test_the_preflight_names_a_worker_package_of_another_version(
    wheel: Path, tmp_path: Path
) -> None:
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    init = unpacked / "endpoint" / "__init__.py"
    init.write_text(init.read_text().replace(endpoint.__version__, "0.0.1"))
    # Parsl and dill come from the endpoint's own site-packages (a path, so its .pth files,
    # the editable checkout among them, are not read): only the package differs.
    python = bare_venv(tmp_path / "old", unpacked, site_packages())
    found = launch.problems(str(python), want())
    have = endpoint.__version__
    assert found == [("package", f"this endpoint's worker package 0.0.1 (the endpoint has {have})")]


def test_a_wrong_python_asks_for_a_new_environment() -> None:
    found = [("python", "Python 3.9 (the endpoint runs 3.11)")]
    fix = launch.fix(["3.11", "P", "D"], found)
    assert fix.startswith("Recreate that environment with Python 3.11, then in it pip install")
    assert "parsl==P dill==D compute-endpoint-worker==" in fix


def test_parsl_and_dill_alone_need_no_worker_package() -> None:
    found = [("dill", "dill 0.3.8 (the endpoint has D)")]
    assert launch.fix(["3.11", "P", "D"], found) == (
        "In that environment, pip install parsl==P dill==D"
    )
