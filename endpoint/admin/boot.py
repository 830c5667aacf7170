"""`enable-on-boot` / `disable-on-boot`: a systemd unit that starts the endpoint at boot.

Unlike the official one, the unit carries the config dir (`GLOBUS_COMPUTE_USER_DIR` and
`--config-dir`), so an endpoint configured outside `~/.globus_compute` starts; it does not
restart an endpoint that exits on purpose (stopped, idle, locked, deleted, bad config); and
`disable-on-boot` really removes it. Client credentials go to a 0600 environment file in the
endpoint directory rather than into the world-readable unit.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from endpoint.errors import LifecycleError, PermissionDenied
from endpoint.host.files import write_replace

log = logging.getLogger(__name__)

SYSTEMD_DIR = Path("/etc/systemd/system")
#: Where units go instead (tests, or a user-level systemd); systemctl is then never called.
SYSTEMD_DIR_ENV = "COMPUTE_ENDPOINT_SYSTEMD_DIR"
BOOT_ENV_FILE = "boot.env"
#: Environment that decides which service and identity the endpoint uses, carried as is.
_CARRIED_ENV = (
    "GLOBUS_SDK_ENVIRONMENT",
    "GLOBUS_SDK_SERVICE_URL_AUTH",
    "COMPUTE_SERVICE_URL",
    "GLOBUS_COMPUTE_CLIENT_ID",
)
_SECRET_ENV = "GLOBUS_COMPUTE_CLIENT_SECRET"
#: Exit codes that mean "do not try again" (see `compute-endpoint --help`).
_FINAL_EXIT_CODES = "65 69 70 77 78"


def unit_dir() -> Path:
    override = os.environ.get(SYSTEMD_DIR_ENV)
    return Path(override) if override else SYSTEMD_DIR


def unit_name(endpoint_name: str) -> str:
    """`globus-compute-endpoint-<name>.service`, escaped the way systemd-escape does it."""
    escaped = "".join(
        ch if ch.isascii() and (ch.isalnum() or ch in ":_.-") else f"\\x{ord(ch):02x}"
        for ch in endpoint_name
    )
    return f"globus-compute-endpoint-{escaped}.service"


def _quoted(text: str) -> str:
    """Double-quoted as systemd parses it; `%` (specifiers) doubled."""
    text = text.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _exec_word(arg: str) -> str:
    """One ExecStart= word: `$` would also be expanded there."""
    return _quoted(arg.replace("$", "$$"))


def _env_line(key: str, value: str) -> str:
    return f"Environment={_quoted(f'{key}={value}')}"


def _path_value(path: Path) -> str:
    """A path setting (WorkingDirectory=, EnvironmentFile=): unquoted, specifiers escaped."""
    return str(path).replace("%", "%%")


def _executable() -> str:
    here = Path(sys.executable).parent / "compute-endpoint"
    return str(here if here.exists() else shutil.which("compute-endpoint") or here)


def render_unit(name: str, ep_dir: Path, config_dir: Path, env_file: Path | None) -> str:
    env = [_env_line("GLOBUS_COMPUTE_USER_DIR", str(config_dir))]
    env += [_env_line(k, os.environ[k]) for k in _CARRIED_ENV if os.environ.get(k)]
    if env_file is not None:
        env.append(f"EnvironmentFile={_path_value(env_file)}")
    exec_start = " ".join(
        _exec_word(a) for a in (_executable(), "--config-dir", str(config_dir), "start", name)
    )
    lines = [
        "[Unit]",
        f'Description=Globus Compute Endpoint "{name}"',
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"User={getpass.getuser()}",
        f"WorkingDirectory={_path_value(ep_dir)}",
        *env,
        f"ExecStart={exec_start}",
        # The endpoint drains and then stops its workers itself; only leftovers get SIGKILL.
        "KillMode=mixed",
        "TimeoutStopSec=90",
        "Restart=on-failure",
        "RestartSec=5",
        f"RestartPreventExitStatus={_FINAL_EXIT_CODES}",
        "UMask=0077",
        # Hardening that leaves tasks alone. Not NoNewPrivileges: rootless podman
        # (newuidmap) and setuid apptainer need privilege transitions inside tasks.
        "ProtectSystem=full",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def systemd_running() -> bool:
    """systemctl is worth calling: it exists, systemd is PID 1, and the unit dir is its own."""
    return (
        not os.environ.get(SYSTEMD_DIR_ENV)
        and shutil.which("systemctl") is not None
        and Path("/run/systemd/system").is_dir()
    )


def _systemctl(*args: str) -> bool:
    try:
        proc = subprocess.run(
            ["systemctl", *args], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("systemctl %s failed: %s", " ".join(args), e)
        return False
    if proc.returncode != 0:
        log.warning("systemctl %s: %s", " ".join(args), proc.stderr.strip())
    return proc.returncode == 0


@dataclass(frozen=True)
class Enabled:
    unit_path: Path
    unit_text: str
    enabled: bool  # systemctl enable ran and succeeded


def _write_env_file(ep_dir: Path) -> None:
    secret = os.environ.get(_SECRET_ENV)
    if not secret:
        return
    write_replace(ep_dir / BOOT_ENV_FILE, f"{_SECRET_ENV}={secret}\n")


def enable(name: str, ep_dir: Path, config_dir: Path) -> Enabled:
    """Write the unit (never over an existing one) and enable it where systemd runs."""
    directory = unit_dir()
    if not directory.is_dir():
        raise LifecycleError(f"{directory} does not exist: is this a systemd host?")
    path = directory / unit_name(name)
    env_file = ep_dir / BOOT_ENV_FILE if os.environ.get(_SECRET_ENV) else None
    text = render_unit(name, ep_dir, config_dir, env_file)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise LifecycleError(f"{path} already exists: run disable-on-boot first") from None
    except PermissionError:
        raise PermissionDenied(f"cannot write {path} (run as root?); unit:\n\n{text}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    _write_env_file(ep_dir)
    enabled = False
    if systemd_running():
        enabled = _systemctl("daemon-reload") and _systemctl("enable", path.name)
    return Enabled(path, text, enabled)


@dataclass(frozen=True)
class Disabled:
    unit_path: Path
    removed: bool
    systemctl: bool  # systemctl disable --now ran


def disable(name: str, ep_dir: Path) -> Disabled:
    """Stop and disable the unit where systemd runs, then delete it and its env file."""
    path = unit_dir() / unit_name(name)
    ran = False
    if path.exists() and systemd_running():
        ran = _systemctl("disable", "--now", path.name)
    removed = False
    try:
        path.unlink()
        removed = True
    except FileNotFoundError:
        pass
    except PermissionError:
        raise PermissionDenied(f"cannot remove {path} (run as root?)") from None
    with contextlib.suppress(FileNotFoundError):
        (ep_dir / BOOT_ENV_FILE).unlink()
    if ran:
        _systemctl("daemon-reload")
    return Disabled(path, removed, ran)
