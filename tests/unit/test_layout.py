"""The house rules of `endpoint/` (README "Layout"): which folder may import which.

Checked two ways: statically over every import statement (module level and inside functions,
followed transitively), and by importing a module in a fresh interpreter and looking at what
it loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "endpoint"

#: Folder -> the folders it may import (besides itself and the top-level `errors`).
ALLOWED: dict[str, set[str]] = {
    "amqp": set(),
    "host": {"amqp"},
    "protocol": {"amqp", "host"},
    "worker": {"protocol"},
    "containers": {"protocol", "worker"},
    "config": {"containers", "host", "protocol"},
    "engines": {"config", "containers", "protocol", "worker"},
    "runtime": {"amqp", "config", "engines", "host", "protocol"},
    # The spawner preloads the user endpoint's modules so that forks start warm.
    "manager": {"amqp", "config", "engines", "host", "protocol", "runtime"},
    "admin": {"amqp", "config", "engines", "host", "manager", "protocol", "runtime"},
    "cli": {"admin", "amqp", "config", "engines", "host", "manager", "protocol", "runtime"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


@cache
def imports_of(module: str) -> frozenset[str]:
    """The `endpoint` modules `module` imports anywhere in its text."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "endpoint")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("endpoint"):
            assert node.module is not None
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
    return frozenset(m for m in out if m != module and m in MODULES)


def reachable(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for dep in imports_of(todo.pop()):
            # Importing a.b.c runs a/__init__ and a/b/__init__ too.
            chain = [".".join(dep.split(".")[:i]) for i in range(2, dep.count(".") + 2)]
            for m in chain:
                if m in MODULES and m not in seen:
                    seen.add(m)
                    todo.append(m)
    return seen


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else ""


def test_every_folder_imports_only_what_the_layout_allows() -> None:
    wrong = []
    for module in MODULES:
        mine = folder(module)
        if not mine:
            continue  # endpoint/__init__.py and errors.py import nothing of ours
        for dep in imports_of(module):
            theirs = folder(dep)
            if theirs and theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{module} imports {dep}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_top_level_modules_import_nothing_of_ours() -> None:
    assert imports_of("endpoint.errors") == frozenset()
    assert imports_of("endpoint") == frozenset()


RULES = [
    # (module or folder prefix, forbidden prefixes, why)
    ("endpoint.runtime", ("endpoint.manager", "endpoint.admin", "endpoint.cli"), "runtime"),
    ("endpoint.manager.command", ("endpoint.runtime",), "the command decoder"),
    (
        "endpoint.runtime.interchange",
        (
            "endpoint.engines.thread",
            "endpoint.engines.process",
            "endpoint.engines.routing",
            "endpoint.engines.build",
            "endpoint.engines.htex",
            "endpoint.engines.process_launch",
        ),
        "the pure core",
    ),
]


@pytest.mark.parametrize(("prefix", "forbidden", "who"), RULES, ids=[r[2] for r in RULES])
def test_import_rules_hold_transitively(prefix: str, forbidden: tuple[str, ...], who: str) -> None:
    broken = {
        f"{m} reaches {dep}"
        for m in MODULES
        if m == prefix or m.startswith(prefix + ".")
        for dep in reachable(m)
        if dep.startswith(forbidden)
    }
    assert not broken, f"{who}: " + "; ".join(sorted(broken))


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("endpoint.manager.command", "endpoint.runtime"),
        ("endpoint.runtime.interchange", "endpoint.engines.htex"),
        ("endpoint.runtime.managed", "endpoint.manager"),
        ("endpoint.runtime.adapter", "endpoint.cli"),
    ],
)
def test_importing_a_module_loads_nothing_it_must_not(module: str, forbidden: str) -> None:
    code = (
        f"import sys, {module}; "
        f"print('\\n'.join(m for m in sys.modules if m.startswith({forbidden!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == "", f"importing {module} loaded: {out.split()}"


def test_the_dev_harness_is_not_in_the_product() -> None:
    for module, path in MODULES.items():
        assert "devstack" not in path.read_text(), f"{module} mentions devstack"
    assert not (ROOT / "webservice" / "stack.py").exists()


def _imported_roots(path: Path) -> set[str]:
    """The top-level package of every import statement in `path`."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_product_never_imports_the_official_packages() -> None:
    """The official SDK is installed beside us as a library for users' functions (their
    ShellFunction and MPIFunction unpickle on the workers); our own code never uses it."""
    official = {"globus_compute_sdk", "globus_compute_endpoint", "globus_compute_common"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(found)
        for top in ("endpoint", "webservice")
        for path in (ROOT / top).rglob("*.py")
        if (found := _imported_roots(path) & official)
    }
    assert offenders == {}
