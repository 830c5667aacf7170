"""Per-user Python environments for a core endpoint's workers, built with uv (issue 15).

The default user template makes each submitter's workers run in a virtual environment that
matches them: the Python minor version and Globus Compute SDK version their SDK reports in
`user_runtime`, plus the packages of their `requirements` option. Two halves:

* **Rendering** (the manager, `spec_for` and `worker_init_script`): the template's
  ``user_python_environment(...)`` call turns the submitter's values into an `EnvSpec` and
  returns the ``worker_init`` lines that ask for it. The spec travels base64url-encoded, so
  nothing a submitter wrote reaches a shell or the YAML as text. When the endpoint's own
  Python already matches (same minor, same SDK, no requirements) no environment is needed
  and the workers start at once in the endpoint's Python.
* **Building** (``python -m endpoint.manager.userenv activate SPEC``, run by ``worker_init``,
  so as the user endpoint's user, never as the manager's root): `ensure` builds the
  environment once per key under the user's own, private (0700) cache directory, with a uv
  download cache as private beside it (`uv_cache`), and prints the shell lines that
  activate it. A lock file per key makes concurrent first submissions
  build it once; the others wait and reuse it. A marker file, written last, says that a
  build finished: a directory without one (a build that died) is built again.

The environment holds what a worker needs and nothing of the endpoint's service side: this
endpoint's worker package (`compute-endpoint-worker`, installed from its wheel by path, never
by name from an index), the endpoint's exact Parsl and dill, the submitter's SDK version when
it can be installed, and the requirements. A failed build exits non-zero with uv's own error
on stderr, so the block fails at once and its tasks fail with that text (the block breaker),
instead of waiting for workers that never come. Python builds are never downloaded: uv uses
the interpreters it finds on PATH (an administrator adds more through user_environment.yaml).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import endpoint
from endpoint.errors import UserEnvError

log = logging.getLogger(__name__)

#: Under the user's Compute directory (``$GLOBUS_COMPUTE_USER_DIR``, else ``~/.globus_compute``).
CACHE_DIR_NAME = "uv-envs"
#: uv's download cache, beside the environments and as private as they are (see `uv_cache`).
UV_CACHE_NAME = "uv-cache"
MARKER = "compute-endpoint-env.json"
#: A requirements string larger than this is refused before it is parsed or hashed.
MAX_REQUIREMENTS = 64 * 1024
#: An encoded spec larger than this is refused before it is decoded.
MAX_SPEC_CHARS = 4 * MAX_REQUIREMENTS
#: A build that takes longer is stopped and reported: a hung index must not hang the block.
BUILD_TIMEOUT_S = 1800.0
#: An administrator may change that in user_environment.yaml.
TIMEOUT_ENV = "GC_USER_ENV_BUILD_TIMEOUT_S"
#: Characters of uv's output quoted in an error (the block breaker quotes the stderr tail).
ERROR_TAIL = 1500
#: An administrator (or a test) may point at the worker wheel when there is no source tree.
WHEEL_ENV = "COMPUTE_ENDPOINT_WORKER_WHEEL"
WORKER_DIST = "compute-endpoint-worker"
#: Read by `endpoint.worker.launch` (the same name there; the layout keeps manager/ out of
#: worker/, tests/unit/test_userenv.py checks they agree): the minor an environment is for.
WORKER_PYTHON_ENV = "COMPUTE_ENDPOINT_WORKER_PYTHON"
SDK_DIST = "globus-compute-sdk"

_PYTHON = re.compile(r"^3\.\d{1,2}$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!\-]{0,63}$")


@dataclass(frozen=True)
class EnvSpec:
    """What an environment is built for; equal specs share one environment."""

    python: str  # the minor version, "3.12": patch releases are interchangeable
    sdk: str | None
    requirements: str
    # The endpoint side: a new endpoint release gets new environments, never stale ones.
    endpoint: str
    parsl: str
    dill: str

    @property
    def key(self) -> str:
        doc = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(doc.encode()).hexdigest()

    @property
    def name(self) -> str:
        return f"py{self.python}-sdk{self.sdk or 'none'}-{self.key[:16]}"

    def encode(self) -> str:
        doc = json.dumps(asdict(self), separators=(",", ":"))
        return base64.urlsafe_b64encode(doc.encode()).decode()

    @classmethod
    def decode(cls, text: str) -> EnvSpec:
        if len(text) > MAX_SPEC_CHARS:
            raise UserEnvError(f"environment spec longer than {MAX_SPEC_CHARS} characters")
        try:
            doc = json.loads(base64.urlsafe_b64decode(text.encode("ascii")))
        except (ValueError, binascii.Error, UnicodeError) as e:
            raise UserEnvError(f"environment spec is not valid: {e}") from None
        if not isinstance(doc, dict) or set(doc) != {f for f in cls.__dataclass_fields__}:
            raise UserEnvError("environment spec has the wrong fields")
        spec = cls(**doc)
        spec.check()
        return spec

    def check(self) -> None:
        if not _PYTHON.match(str(self.python)):
            raise UserEnvError(f"Python version {self.python!r} is not of the form 3.N")
        for what in ("endpoint", "parsl", "dill"):
            if not _VERSION.match(str(getattr(self, what))):
                raise UserEnvError(f"{what} version {getattr(self, what)!r} is not a version")
        if self.sdk is not None and not _VERSION.match(str(self.sdk)):
            raise UserEnvError(f"SDK version {self.sdk!r} is not a version")
        check_requirements(self.requirements)


# ---- rendering: the submitter's values to a spec ------------------------------------------


def check_requirements(text: Any) -> str:
    if not isinstance(text, str):
        raise UserEnvError("requirements must be a string (the lines of a requirements.txt)")
    if len(text.encode()) > MAX_REQUIREMENTS:
        raise UserEnvError(f"requirements is larger than {MAX_REQUIREMENTS} bytes")
    if "\x00" in text:
        raise UserEnvError("requirements contains a NUL character")
    return text


def normalize_requirements(text: str | None) -> str:
    """One spelling per meaning, so trailing blanks or blank lines do not build a new env."""
    if text is None:
        return ""
    lines = (line.rstrip() for line in check_requirements(text).splitlines())
    return "\n".join(line for line in lines if line)


def own_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _runtime_python(runtime: Mapping[str, Any]) -> str | None:
    python = runtime.get("python")
    version = python.get("version_tuple") if isinstance(python, Mapping) else None
    if isinstance(version, list | tuple) and len(version) >= 2:
        text = f"{version[0]}.{version[1]}"
    else:
        parts = str(runtime.get("python_version") or "").split(".")
        text = ".".join(parts[:2]) if len(parts) >= 2 else ""
    return text if _PYTHON.match(text) else None


def _runtime_sdk(runtime: Mapping[str, Any]) -> str | None:
    value = runtime.get("globus_compute_sdk_version")
    return value if isinstance(value, str) and _VERSION.match(value) else None


def spec_for(runtime: Mapping[str, Any], requirements: str | None) -> EnvSpec:
    """The environment a submitter needs, from their `user_runtime` and `requirements`.

    Values the runtime reports in an unexpected shape fall back to the endpoint's own (a
    submitter cannot name a path or an option through them: both are checked patterns)."""
    return EnvSpec(
        python=_runtime_python(runtime) or own_python(),
        sdk=_runtime_sdk(runtime),
        requirements=normalize_requirements(requirements),
        endpoint=endpoint.__version__,
        parsl=installed("parsl") or "missing",
        dill=installed("dill") or "missing",
    )


def needs_env(spec: EnvSpec) -> bool:
    """False when the endpoint's own Python already is that environment."""
    own_sdk = installed(SDK_DIST)
    return bool(spec.requirements or spec.python != own_python() or spec.sdk not in (None, own_sdk))


def activate_command(spec: EnvSpec) -> str:
    """The ``worker_init`` lines that build (or reuse) and activate the spec's environment.

    A failed build ends the block's script with its status, so the block fails at once."""
    python = shlex.quote(sys.executable)
    return (
        f"gc_user_env=$({python} -P -m endpoint.manager.userenv activate {spec.encode()})"
        " || exit $?\n"
        'eval "$gc_user_env"'
    )


def worker_init_script(
    runtime: Mapping[str, Any], requirements: str | None, worker_init: str | None
) -> str:
    """The whole ``worker_init``: the environment (when needed), then the submitter's own."""
    spec = spec_for(runtime, requirements)
    parts = [activate_command(spec)] if needs_env(spec) else []
    if worker_init:
        parts.append(worker_init)
    return "\n".join(parts)


# ---- building: as the user endpoint's user --------------------------------------------------


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("GLOBUS_COMPUTE_USER_DIR") or os.path.join(
        env.get("HOME") or str(Path.home()), ".globus_compute"
    )
    return Path(base) / CACHE_DIR_NAME


def private_dir(path: Path) -> Path:
    """`path` as a directory of this user's that no one else can read or write (made 0700,
    as is every directory above it that this creates)."""
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another builder was first
            directory.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UserEnvError(f"{path} is not a directory (a symbolic link?); refusing to use it")
    if st.st_uid != os.getuid():
        raise UserEnvError(
            f"{path} belongs to uid {st.st_uid}, not to this user ({os.getuid()}); "
            "per-user environments must live in the user's own directory"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)  # ours: make it private rather than fail
    return path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`: the second builder of a key waits for the first."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_marker(env_dir: Path) -> dict[str, Any] | None:
    try:
        with open(env_dir / MARKER, "rb") as f:
            data = f.read(1 << 20)
        doc = json.loads(data)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def ready(env_dir: Path, spec: EnvSpec) -> bool:
    marker = read_marker(env_dir)
    return (
        marker is not None
        and marker.get("key") == spec.key
        and os.access(env_dir / "bin" / "python", os.X_OK)
    )


def source_wheel() -> Path:
    """Where `make worker-wheel` leaves the wheel when this endpoint runs from its source tree."""
    root = Path(endpoint.__file__).resolve().parents[1]
    return root / "dist" / f"compute_endpoint_worker-{endpoint.__version__}-py3-none-any.whl"


def worker_wheel() -> Path:
    """This endpoint's worker package, as `make worker-wheel` (or the administrator) left it."""
    named = os.environ.get(WHEEL_ENV)
    path = Path(named) if named else source_wheel()
    if not path.is_file():
        raise UserEnvError(
            f"the worker package wheel {path} is missing: run `make worker-wheel` in the "
            f"endpoint's source tree, or set {WHEEL_ENV} to the wheel's path"
        )
    return path


def uv_binary() -> str:
    try:
        from uv import find_uv_bin  # the `uv` distribution: a dependency of this endpoint

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise UserEnvError("uv is not installed: `pip install uv` into the endpoint's environment")


def build_timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else BUILD_TIMEOUT_S
    except ValueError:
        raise UserEnvError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if not 0 < value < 7 * 86400:
        raise UserEnvError(f"{TIMEOUT_ENV}={text!r} must be between 0 and a week")
    return value


def uv_cache(root: Path) -> Path:
    """The uv cache the builds of `root`'s environments use.

    uv's own default (~/.cache/uv) is created world-readable, with a world-writable lock
    file; in a home other users may enter (Debian's 0755) it would show them every package
    this user installed, private ones included. So unless the administrator or the user
    names one (UV_CACHE_DIR), the cache is a private sibling of the environments: on the same
    file system, so uv still links instead of copying."""
    named = os.environ.get("UV_CACHE_DIR")
    return Path(named) if named else private_dir(root.parent / UV_CACHE_NAME)


def _run(cmd: list[str], what: str, cache: Path) -> None:
    timeout = build_timeout()
    env = {
        **os.environ,
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
        "UV_CACHE_DIR": str(cache),
    }
    for name in ("VIRTUAL_ENV", "PYTHONHOME", "UV_SYSTEM_PYTHON"):
        env.pop(name, None)  # an active env must not be taken for the one being built
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise UserEnvError(f"{what} did not finish in {timeout:.0f} s ({TIMEOUT_ENV})") from None
    except OSError as e:
        raise UserEnvError(f"{what}: cannot run {cmd[0]}: {e}") from None
    if proc.returncode != 0:
        output = (proc.stderr.strip() or proc.stdout.strip())[-ERROR_TAIL:]
        raise UserEnvError(f"{what} failed (uv exit {proc.returncode}):\n{output}")


def _install(uv: str, env_dir: Path, spec: EnvSpec, with_sdk: bool, cache: Path) -> None:
    wheel = worker_wheel()
    cmd = [
        uv, "pip", "install", "--no-config", "--python", str(env_dir / "bin" / "python"),
        f"{WORKER_DIST} @ {wheel.resolve().as_uri()}",
        f"parsl=={spec.parsl}", f"dill=={spec.dill}",
    ]  # fmt: skip
    if with_sdk and spec.sdk:
        cmd.append(f"{SDK_DIST}=={spec.sdk}")
    if spec.requirements:
        reqs = env_dir / "requirements.txt"
        reqs.write_text(spec.requirements + "\n")
        cmd += ["-r", str(reqs)]
    _run(cmd, "installing the packages", cache)


def build(spec: EnvSpec, env_dir: Path) -> list[str]:
    """Create the environment in `env_dir` (absent); the warnings worth telling the user."""
    uv = uv_binary()
    cache = uv_cache(env_dir.parent)
    _run(
        [uv, "venv", "--no-config", "--no-project", "--quiet", "--python", spec.python,
         str(env_dir)],
        f"creating a Python {spec.python} environment",
        cache,
    )  # fmt: skip
    os.chmod(env_dir, 0o700)
    try:
        _install(uv, env_dir, spec, with_sdk=True, cache=cache)
        return []
    except UserEnvError as first:
        if not spec.sdk:
            raise
        # "If available": an SDK release that cannot be installed here (not on the index,
        # or pinning another dill) must not cost the user their environment.
        try:
            _install(uv, env_dir, spec, with_sdk=False, cache=cache)
        except UserEnvError:
            raise first from None
        return [f"{SDK_DIST}=={spec.sdk} could not be installed; the environment lacks it"]


def _write_marker(env_dir: Path, spec: EnvSpec, seconds: float) -> None:
    python = env_dir / "bin" / "python"
    proc = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    doc = {
        "key": spec.key,
        "spec": asdict(spec),
        "python_version": proc.stdout.strip(),
        "created": time.time(),
        "build_seconds": round(seconds, 3),
        "pid": os.getpid(),
    }
    tmp = env_dir / f".{MARKER}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, env_dir / MARKER)  # last: its presence means the build finished


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def ensure(spec: EnvSpec, root: Path | None = None) -> tuple[Path, bool]:
    """The spec's environment, built if need be: (its path, whether this call built it)."""
    root = private_dir(cache_root() if root is None else root)
    env_dir = root / spec.name
    with locked(root / f"{spec.name}.lock"):
        if ready(env_dir, spec):
            log.info("reusing the Python environment %s", env_dir)
            return env_dir, False
        _remove(env_dir)  # a build that died part-way: start clean
        log.info("building the Python environment %s", env_dir)
        started = time.monotonic()
        try:
            for warning in build(spec, env_dir):
                log.warning("%s", warning)
            _write_marker(env_dir, spec, time.monotonic() - started)
        except BaseException:
            with contextlib.suppress(OSError):
                _remove(env_dir)
            raise
        log.info("built %s in %.1f s", env_dir, time.monotonic() - started)
        return env_dir, True


def activation(env_dir: Path, python: str) -> str:
    """Shell lines that make `env_dir` the workers' environment (what ``activate`` does).

    PYTHONPATH is cleared: the workers import what the environment holds, not the endpoint's
    source tree; a submitter's own ``worker_init`` runs after this and may set it again. The
    Python minor it was built for is declared to `endpoint.worker.launch`, which then checks
    the environment against that minor rather than the endpoint's."""
    q = shlex.quote(str(env_dir))
    return (
        f"export VIRTUAL_ENV={q}\n"
        f'export PATH={shlex.quote(str(env_dir / "bin"))}:"$PATH"\n'
        f"export {WORKER_PYTHON_ENV}={shlex.quote(python)}\n"
        "unset PYTHONHOME PYTHONPATH\n"
    )


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="compute-endpoint user env: %(message)s"
    )
    if len(argv) != 2 or argv[0] != "activate":
        print("usage: python -m endpoint.manager.userenv activate SPEC", file=sys.stderr)
        return 2
    try:
        spec = EnvSpec.decode(argv[1])
        env_dir, _ = ensure(spec)
    except (UserEnvError, OSError) as e:
        print(
            "compute-endpoint: cannot build the Python environment for this user endpoint "
            f"(Python {_describe(argv[1])}): {e}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    sys.stdout.write(activation(env_dir, spec.python))
    return 0


def _describe(text: str) -> str:
    with contextlib.suppress(UserEnvError):
        spec = EnvSpec.decode(text)
        return f"{spec.python}, SDK {spec.sdk or 'any'}"
    return "?"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
