"""apptainer.def without apptainer (it cannot be installed on these machines).

What runs: the definition is parsed; its %files are copied the way apptainer copies them
(parent directories created, `cp -fLr`) and its %post runs as root in a container on the same
base image; the result is committed, then %test, %runscript and %startscript run as apptainer
runs them: the calling user (an arbitrary UID), a read-only image, a writable $HOME, with
%environment sourced first. What does not run: apptainer itself (SIF packing, its bind mounts,
`apptainer instance`, the `%labels` and `%help` metadata in a SIF).
"""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.appliance.conftest import (
    LABEL,
    PREFIX,
    ROOT,
    Container,
    Images,
    broker_ports,
    docker,
    free_port,
    version,
    wait_for,
)

DEF = ROOT / "apptainer.def"
SECTIONS = ["files", "post", "environment", "runscript", "startscript", "test", "labels", "help"]
UID = "23456"
HOME = "/tmp/home"


def parse(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(header keywords, section name -> dedented body) of a definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        start = re.match(r"^%(\w+)\s*$", line)
        if start:
            current = sections.setdefault(start.group(1), [])
        elif current is not None:
            current.append(line)
        elif re.match(r"^\w+:", line):
            key, value = line.split(":", 1)
            header[key.strip()] = value.strip()
    return header, {k: textwrap.dedent("\n".join(v)).strip() + "\n" for k, v in sections.items()}


HEADER, BODY = parse(DEF.read_text())


def files_script() -> str:
    """%files as shell: apptainer creates the destination's parents, then `cp -fLr`."""
    lines = ["set -eu", "cd /ctx"]
    for entry in BODY["files"].splitlines():
        src, dest = entry.split()
        lines.append(f'mkdir -p "$(dirname {dest})" && cp -fLr {src} {dest}')
    return "\n".join(lines) + "\n"


def test_the_definition_has_every_section_and_matches_the_package() -> None:
    assert HEADER == {"Bootstrap": "docker", "From": "debian:bookworm-slim"}
    assert set(SECTIONS) <= set(BODY), f"missing: {set(SECTIONS) - set(BODY)}"
    labels = dict(line.split(None, 1) for line in BODY["labels"].splitlines())
    assert labels["org.opencontainers.image.version"] == version()
    for role in ("all-in-one", "webservice", "instance start"):
        assert role in BODY["help"]
    for script in ("runscript", "startscript"):
        assert 'exec /usr/local/bin/entrypoint "$@"' in BODY[script]
    # State under $HOME: the image is read-only and runs as the caller.
    assert "$HOME" in BODY["environment"]


@dataclass(frozen=True)
class Built:
    tag: str
    defdir: Path  # the sections as scripts, mounted at /def


@pytest.fixture(scope="module")
def built(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """The image %files + %post produce, as a docker image (`images`: the base and CA certs)."""
    defdir = tmp_path_factory.mktemp("def")
    (defdir / "build.sh").write_text(files_script() + BODY["post"])
    for name in ("environment", "runscript", "startscript", "test"):
        (defdir / f"{name}.sh").write_text(BODY[name])
    # Read by the container's arbitrary UID: pytest's temp dirs are private.
    defdir.chmod(0o755)
    for path in defdir.iterdir():
        path.chmod(0o644)
    builder, tag = f"{PREFIX}-sif-build", f"{PREFIX}-sif:latest"
    started = time.monotonic()
    docker(
        "run", "--name", builder, "--label", LABEL, "--network", "host",
        "--volume", f"{ROOT}:/ctx:ro", "--volume", f"{defdir}:/def:ro",
        HEADER["From"], "sh", "-e", "/def/build.sh", timeout=900,
    )  # fmt: skip
    docker("commit", builder, tag)
    docker("rm", builder)
    size = int(docker("image", "inspect", "--format", "{{.Size}}", tag))
    took = time.monotonic() - started
    print(f"\n[appliance] apptainer %files + %post: {took:.0f}s, {size / 1e6:.0f} MB")
    yield Built(tag, defdir)
    docker("rmi", "--force", tag, check=False)


def as_caller(built: Built, script: str, *args: str, detach: str = "") -> str:
    """Run a section as `apptainer run/test` would: caller's UID, read-only image, own $HOME,
    %environment sourced first."""
    shell = f'mkdir -p "$HOME" && . /def/environment.sh && exec sh {script} "$@"'
    opts = ["--detach", "--name", detach, "--label", LABEL] if detach else ["--rm"]
    ports = {**broker_ports(), "WEBSERVICE_PORT": str(free_port())}
    return docker(
        "run", *opts, "--network", "host", "--read-only", "--tmpfs", "/tmp:rw,exec,size=512m",
        "--user", UID, "--env", f"HOME={HOME}", "--volume", f"{built.defdir}:/def:ro",
        *[f"--env={k}={v}" for k, v in ports.items()],
        built.tag, "sh", "-c", shell, "sh", *args, timeout=300,
    )  # fmt: skip


def test_test_section_passes_as_the_calling_user(built: Built) -> None:
    assert version() in as_caller(built, "/def/test.sh")


def test_runscript_and_startscript_hand_commands_to_the_entrypoint(built: Built) -> None:
    for script in ("/def/runscript.sh", "/def/startscript.sh"):
        assert version() in as_caller(built, script, "compute-endpoint", "version")


def test_runscript_runs_the_all_in_one_on_a_read_only_image(built: Built) -> None:
    box = Container(f"{PREFIX}-sif-aio")
    as_caller(built, "/def/runscript.sh", "all-in-one", detach=box.name)
    health = ". /def/environment.sh && /opt/compute-endpoint/appliance/bin/healthcheck.py"

    def healthy() -> bool:
        if not box.running():
            raise AssertionError("the all-in-one exited")
        return docker("exec", box.name, "sh", "-c", health, check=False).count("ok: ") == 3

    try:
        wait_for("the all-in-one (from %runscript) to be healthy", healthy, 180, every=2)
        state = box.exec("sh", "-c", "ls $HOME/.local/state/compute-endpoint")
        assert "credentials.json" in state and "rabbitmq" in state
    except AssertionError as e:
        raise AssertionError(f"{e}\n{box.logs()}") from None
    finally:
        docker("rm", "--force", box.name, check=False)
