"""What a worker image's Python is: asked once per image, then remembered.

Before a GlobusComputeEngine lends an image its worker code (`endpoint.containers.overlay`),
it runs ``python3 -c PROBE`` in the image, the same way it runs workers (same runtime, same
options, same mount), and reads back one JSON line: the Python version, the machine and C
library (whether the endpoint's compiled Parsl dependencies load there), and which Parsl,
dill and Globus Compute packages the image carries (for the log).

The answer is cached by the image's content id (docker's and podman's image id, a file's
size and mtime): in memory for this process, and as a small JSON file under the run dir so
that an endpoint restart does not run the probe again. A retagged image has another id and
is asked again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from endpoint.containers.argv import launch_argv
from endpoint.containers.clients import ContainerClient
from endpoint.containers.overlay import Platform
from endpoint.containers.spec import ContainerSpec, LaunchContext
from endpoint.errors import ContainerError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 180.0
#: A probe's answer is a few hundred bytes; anything longer is not ours to parse.
MAX_ANSWER_BYTES = 8192
#: Written for any Python 3 (no f-strings, importlib.metadata optional), so an old image's
#: Python is reported rather than failing with a syntax error.
PROBE = """
import json, platform, sys
try:
    from importlib import metadata as md
except ImportError:
    md = None
def version(name):
    if md is None:
        return 'unknown'
    try:
        return md.version(name)
    except Exception:
        return 'missing'
print(json.dumps({
    'python': '%d.%d' % sys.version_info[:2],
    'python_full': platform.python_version(),
    'machine': platform.machine(),
    'libc': platform.libc_ver()[0],
    'packages': dict((n, version(n)) for n in (
        'parsl', 'dill', 'globus-compute-endpoint', 'container-compute-endpoint')),
}))
"""


@dataclass(frozen=True)
class ImageInfo:
    python: str  # major.minor
    python_full: str
    machine: str
    libc: str
    packages: dict[str, str]

    @property
    def platform(self) -> Platform:
        return Platform(self.machine, self.libc)

    def describe(self) -> str:
        have = ", ".join(f"{k} {v}" for k, v in sorted(self.packages.items()) if v != "missing")
        where = f"Python {self.python_full} on {self.platform.describe()}"
        return f"{where}; {have or 'no Parsl, dill or Globus Compute packages'}"


_memory: dict[str, ImageInfo] = {}
_lock = threading.Lock()


def image_info(
    spec: ContainerSpec, client: ContainerClient, run_dir: Path, cache_dir: Path
) -> ImageInfo:
    """The image's facts: from the caches, or from a probe run in the image."""
    assert spec.image is not None
    image_id = client.image_id(spec.image)
    key = _key(spec, image_id)
    with _lock:
        if key in _memory:
            return _memory[key]
    cached = _read(cache_dir / f"{key}.json") if image_id else None
    info = cached or run_probe(spec, run_dir)
    if cached is None:
        log.info("%s: %s", spec.describe(), info.describe())
        if image_id:
            _write(cache_dir / f"{key}.json", info)
    with _lock:
        _memory[key] = info
    return info


def _key(spec: ContainerSpec, image_id: str | None) -> str:
    text = "\0".join((spec.runtime, spec.image or "", image_id or "", *spec.options))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def run_probe(spec: ContainerSpec, run_dir: Path) -> ImageInfo:
    ctx = LaunchContext(run_dir=str(run_dir))
    argv = launch_argv(spec, ctx, ["python3", "-c", PROBE])
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as e:
        raise ContainerError(f"{spec.program} is not installed on this host") from e
    except subprocess.TimeoutExpired as e:
        raise ContainerError(
            f"{spec.describe()}: python3 in the image did not answer within {PROBE_TIMEOUT_S:g} s"
        ) from e
    stdout, stderr = done.stdout[-MAX_ANSWER_BYTES:], done.stderr[-2000:]
    info = _parse(stdout) if done.returncode == 0 else None
    if info is None:
        said = stderr.decode(errors="replace").strip().splitlines()
        raise ContainerError(
            f"{spec.describe()} cannot run this endpoint's workers: `python3 -c ...` in it"
            f" exited {done.returncode} ({said[-1] if said else 'no output'}); the image"
            " needs a Python 3 named python3 on its PATH"
        )
    return info


def _parse(stdout: bytes) -> ImageInfo | None:
    lines = stdout.decode(errors="replace").strip().splitlines()
    if not lines:
        return None
    try:
        data = json.loads(lines[-1])
        packages = {str(k): str(v) for k, v in dict(data["packages"]).items()}
        return ImageInfo(
            python=str(data["python"]),
            python_full=str(data["python_full"]),
            machine=str(data["machine"]),
            libc=str(data["libc"]),
            packages=packages,
        )
    except (ValueError, KeyError, TypeError):
        return None


def _read(path: Path) -> ImageInfo | None:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_ANSWER_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_ANSWER_BYTES:
        return None
    try:
        data = json.loads(raw)
        return ImageInfo(**{k: data[k] for k in ImageInfo.__dataclass_fields__})
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: ask the image again


def _write(path: Path, info: ImageInfo) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(info), f)
        os.replace(partial, path)
    except OSError as e:  # only a cache: the next start asks the image again
        log.debug("cannot cache image facts in %s: %s", path, e)
