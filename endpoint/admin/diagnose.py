"""`compute-endpoint diagnose`: one private `.tar.gz` to attach to a support request.

It holds what the questions "why is my task waiting?", "why did my batch job die?" and "where
are the logs?" need, with nothing secret in it:

| member                   | what                                                           |
|--------------------------|----------------------------------------------------------------|
| summary.txt              | the verdicts in a few lines, and everything that failed         |
| config/...               | config.yaml (a core endpoint's templates too), redacted       |
| status.json              | what the running endpoint last reported (host/status.py)     |
| versions.json            | Python, this package, Parsl, dill, pika, globus-sdk, the OS;   |
|                          | the worker pools' as the engine reported them                 |
| endpoint.log             | the last LOG_LINES lines, redacted                            |
| journal.json             | how many tasks are pending and results unconfirmed (no payload) |
| checks.json              | the service's version route and the broker's AMQP handshake    |
| files.txt                | the names under the endpoint's directories (never contents)    |
| engine/...               | the newest batch job scripts and their output, Parsl's logs   |

Nothing is read through a symbolic link planted in the endpoint's directories
(`endpoint.host.nofollow`), every read and every check is bounded, and every member passes
`endpoint.host.redact` with the secrets found in the config and the environment.
"""

from __future__ import annotations

import errno
import importlib.metadata
import io
import json
import logging
import os
import platform
import re
import sqlite3
import stat
import sys
import tarfile
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from endpoint import __version__
from endpoint.admin import probes, service
from endpoint.config import EndpointConfig, ManagerConfig, load_config_text
from endpoint.config.loader import parse_yaml
from endpoint.errors import ConfigError, LifecycleError
from endpoint.host import status
from endpoint.host.dirs import CONFIG_FILE, ENDPOINT_JSON, LEGACY_CONFIG_FILE, resolve, user_dir
from endpoint.host.dirs import run_paths as dirs_run_paths
from endpoint.host.files import is_special, refuse_symlink
from endpoint.host.nofollow import Entry, list_under, read_path, read_under
from endpoint.host.pidlock import PID_FILE, state_of
from endpoint.host.redact import redact_text, secret_values

log = logging.getLogger(__name__)

LOG_LINES = 2000
LOG_BYTES = 2 * 1024 * 1024
CONFIG_BYTES = 1024 * 1024
#: The newest batch jobs whose script and output go in, and Parsl logs.
JOBS = 5
PARSL_LOGS = 12
ENGINE_FILE_BYTES = 256 * 1024
ENGINE_TOTAL_BYTES = 8 * 1024 * 1024
#: A core endpoint's own files, besides config.yaml (configure.py writes them).
CORE_FILES = (
    "user_config_template.yaml.j2",
    "user_config_schema.json",
    "user_environment.yaml",
    "example_identity_mapping_config.json",
    "identity_mapping_config.json",
)
#: Distributions whose versions matter to a support request.
DISTRIBUTIONS = (
    "container-compute-endpoint",
    "parsl",
    "dill",
    "pika",
    "globus-sdk",
    "pydantic",
    "PyYAML",
)
#: Parsl keeps the CurveZMQ keys of the interchange here: never copied.
_KEY_DIRS = {"certificates"}
_KEY_SUFFIXES = (".key", ".key_secret", ".pem")
_TOKEN_KEYS = ("access_token", "refresh_token", "id_token")
_JOB_STEM = re.compile(r"(.*?\.\d{9,}(?:\.\d+)?)(?:\.|$)")


@dataclass
class Bundle:
    """What `diagnose` wrote: the archive and the summary it starts with."""

    path: Path
    summary: str
    problems: list[str]


@dataclass
class _Gathered:
    """Members in archive order (raw text: redacted only when written) and what went wrong."""

    name: str
    members: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    known: set[str] = field(default_factory=set)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, text: str) -> None:
        self.members[name] = text

    def add_json(self, name: str, doc: Any) -> None:
        self.members[name] = json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"

    def problem(self, what: str) -> None:
        log.debug("diagnose: %s", what)
        self.problems.append(what)


# ---- reading ---------------------------------------------------------------------------------


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _read(g: _Gathered, root: Path, rel: str | PurePosixPath, limit: int) -> str | None:
    try:
        return _text(read_under(root, rel, limit))
    except FileNotFoundError:
        return None
    except OSError as e:
        g.problem(f"{root / rel}: not read: {e.strerror or e}")
        return None


# ---- the config ------------------------------------------------------------------------------


def _config(g: _Gathered, ep_dir: Path) -> EndpointConfig | ManagerConfig | None:
    text = _read(g, ep_dir, CONFIG_FILE, CONFIG_BYTES)
    legacy = _read(g, ep_dir, LEGACY_CONFIG_FILE, CONFIG_BYTES)
    if legacy is not None:
        # Included as text, never executed: a diagnostic must not run the user's code.
        g.add(f"config/{LEGACY_CONFIG_FILE}", legacy)
        g.problem(f"{LEGACY_CONFIG_FILE} is a legacy Python config: included, not loaded")
    if text is None:
        return None
    g.add(f"config/{CONFIG_FILE}", text)
    _remember_secrets(g, text)
    try:
        cfg = load_config_text(text, str(ep_dir / CONFIG_FILE), base_dir=ep_dir)
    except ConfigError as e:
        g.problem(f"{CONFIG_FILE} is invalid: {e}")
        return None
    if isinstance(cfg, ManagerConfig):
        _core_files(g, ep_dir, cfg)
    return cfg


def _remember_secrets(g: _Gathered, text: str) -> None:
    # The config loader's parser: alias bombs and absurd nesting are refused before expansion.
    try:
        doc, _lines = parse_yaml(text, "secrets")
    except ConfigError:
        return  # not YAML (a Jinja template, ...): the patterns still apply to the text
    g.known.update(secret_values(doc))


def _core_files(g: _Gathered, ep_dir: Path, cfg: ManagerConfig) -> None:
    named = [cfg.user_config_template_path, cfg.user_config_schema_path]
    named.append(cfg.identity_mapping_config_path)
    for name in CORE_FILES:
        text = _read(g, ep_dir, name, CONFIG_BYTES)
        if text is not None:
            g.add(f"config/{name}", text)
            _remember_secrets(g, text)
    for path in named:
        if path is None or (Path(path).parent == ep_dir and Path(path).name in CORE_FILES):
            continue  # absent, or read above
        try:
            text = _text(read_path(Path(path), CONFIG_BYTES))
        except OSError as e:
            g.problem(f"{path}: not read: {e.strerror or e}")
            continue
        g.add(f"config/{Path(path).name}", text)
        _remember_secrets(g, text)


# ---- where the endpoint runs -----------------------------------------------------------------


def _paths(g: _Gathered, ep_dir: Path, cfg: Any) -> tuple[Path, Path]:
    """(work dir, log file), as `start` finds them (`dirs.run_paths`)."""
    paths = cfg.paths if isinstance(cfg, EndpointConfig) else None
    try:
        found = dirs_run_paths(
            ep_dir,
            paths.endpoint_dir if paths else None,
            paths.endpoint_log if paths else None,
            {k: v for k, v in os.environ.items() if k == "GLOBUS_COMPUTE_LOG_PATH"},
        )
    except LifecycleError as e:
        g.problem(f"the endpoint's paths: {e}")
        return ep_dir, ep_dir / "endpoint.log"
    return found.ep_dir, found.log


def _status(g: _Gathered, ep_dir: Path) -> dict[str, Any] | None:
    text = _read(g, ep_dir, status.STATUS_FILE, CONFIG_BYTES)
    doc: dict[str, Any] | None = None
    if text is not None:
        g.add(status.STATUS_FILE, text)
        try:
            parsed = json.loads(text)
            doc = parsed if isinstance(parsed, dict) else None
        except ValueError:
            g.problem(f"{status.STATUS_FILE} is not JSON")
    odd = [ep_dir / n for n in (PID_FILE, ENDPOINT_JSON) if not _plain_or_absent(ep_dir / n)]
    if odd:
        # The lock probe opens these by name: a FIFO there would block it for good.
        g.problem(f"{odd[0]}: not a regular file; the process state is unknown")
        g.facts["state"], g.facts["health"] = "unknown", "unknown"
        return doc
    alive = doc is not None and status.writer_alive(ep_dir, doc.get("pid"))
    verdict = status.judge(doc, alive=alive)
    g.facts["state"] = state_of(ep_dir).value
    g.facts["health"] = f"{'healthy' if verdict.healthy else 'unhealthy'}: {verdict.reason}"
    metrics = (doc or {}).get("metrics")
    if isinstance(metrics, dict):
        g.facts["metrics"] = f"http://{metrics.get('address')}:{metrics.get('port')}/metrics"
    return doc


def _endpoint_id(g: _Gathered, ep_dir: Path) -> str | None:
    text = _read(g, ep_dir, ENDPOINT_JSON, 64 * 1024)
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        doc = None
    value = doc.get("endpoint_id") if isinstance(doc, dict) else None
    return str(value) if value else None


def _plain_or_absent(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return True


def _log_tail(g: _Gathered, log_path: Path) -> None:
    if is_special(log_path):
        g.problem(f"the log goes to {log_path}: nothing to copy")
        return
    try:
        data = read_path(log_path, LOG_BYTES, tail=True)
    except FileNotFoundError:
        g.problem(f"no log at {log_path} (the endpoint has not run yet?)")
        return
    except OSError as e:
        g.problem(f"{log_path}: not read: {e.strerror or e}")
        return
    lines = _text(data).splitlines(keepends=True)
    g.add("endpoint.log", "".join(lines[-LOG_LINES:]))
    g.facts["log"] = f"{log_path} (last {min(len(lines), LOG_LINES)} lines)"


# ---- SQLite files: the journal, and the token store (for its tokens only) -----------------


def _readonly_db(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to an SQLite file of ours, or None when there is none.

    SQLite opens its files by name: a link or a FIFO in their place is refused first."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        refuse_symlink(name)
        if not _plain_or_absent(name):  # SQLite would open a FIFO there and wait
            raise OSError(errno.EINVAL, "not a regular file", str(name))
    if not path.exists():
        return None
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=2.0)


def stored_tokens(path: Path) -> set[str]:
    """The tokens a login cached in the token store (`storage.db`), to mask wherever they
    appear; the store itself never goes into the bundle."""
    db = _readonly_db(path)
    if db is None:
        return set()
    try:
        rows = db.execute("SELECT token_data_json FROM token_storage LIMIT 1000").fetchall()
    finally:
        db.close()
    found: set[str] = set()
    for (text,) in rows:
        try:
            doc = json.loads(str(text)[:65536])
        except ValueError:
            continue
        if isinstance(doc, dict):
            # Only the tokens: `token_type: Bearer` is no secret, and masking it would hide
            # every "Bearer" in the logs.
            found.update(str(doc[k]) for k in _TOKEN_KEYS if doc.get(k))
    return found


def journal_counts(path: Path) -> dict[str, Any]:
    """Counts of the journal's rows, read-only; never a payload."""
    db = _readonly_db(path)
    if db is None:
        return {"present": False}
    try:
        row = db.execute(
            "SELECT count(*), sum(result IS NULL), sum(result IS NOT NULL),"
            " sum(attempts > 1), max(attempts) FROM tasks"
        ).fetchone()
    finally:
        db.close()
    return {
        "present": True,
        "entries": row[0],
        "pending_tasks": row[1] or 0,
        "unconfirmed_results": row[2] or 0,
        "retried_tasks": row[3] or 0,
        "max_attempts": row[4] or 0,
    }


def _journal(g: _Gathered, work_dir: Path) -> None:
    try:
        counts = journal_counts(work_dir / "journal.db")
    except (OSError, sqlite3.Error) as e:
        g.problem(f"journal: not read: {e}")
        counts = {"error": str(e)}
    g.add_json("journal.json", counts)
    g.facts["journal"] = counts


# ---- the engine's files ------------------------------------------------------------------


def _listing(entries: list[Entry]) -> str:
    return "".join(
        f"{e.kind:8} {e.size:>10} {datetime.fromtimestamp(e.mtime, UTC):%Y-%m-%dT%H:%M:%SZ} "
        f"{e.rel}\n"
        for e in entries
    )


def _is_key_material(rel: PurePosixPath) -> bool:
    return bool(_KEY_DIRS & set(rel.parts)) or rel.name.endswith(_KEY_SUFFIXES)


def _newest_jobs(entries: list[Entry]) -> list[Entry]:
    """The files of the JOBS newest batch jobs (a script and its .stdout/.stderr/.submit
    share a stem)."""
    files = [e for e in entries if e.kind == "file"]
    stems: dict[str, float] = {}
    for e in files:
        stem = _job_stem(e.rel.name)
        stems[stem] = max(stems.get(stem, 0.0), e.mtime)
    keep = set(sorted(stems, key=lambda s: stems[s], reverse=True)[:JOBS])
    return [e for e in files if _job_stem(e.rel.name) in keep]


def _job_stem(name: str) -> str:
    """Parsl names a job `<label>.block-N.<time.time()>`; its files add suffixes to that."""
    found = _JOB_STEM.match(name)
    return found.group(1) if found else name.split(".sh")[0]


def _engine_files(g: _Gathered, work_dir: Path) -> None:
    budget = ENGINE_TOTAL_BYTES
    for sub, pick in (("submit_scripts", _newest_jobs), ("parsl", _newest_logs)):
        root = work_dir / sub
        entries = list_under(root)
        if not entries:
            continue
        g.add(f"engine/{sub}.files.txt", _listing(entries))
        for e in pick(entries):
            if _is_key_material(e.rel) or budget <= 0:
                continue
            try:
                data = read_under(root, e.rel, min(ENGINE_FILE_BYTES, budget), tail=True)
            except OSError as err:
                g.problem(f"{root / e.rel}: not read: {err.strerror or err}")
                continue
            budget -= len(data)
            g.add(f"engine/{sub}/{e.rel}", _text(data))
    skipped = [e for e in list_under(work_dir) if e.kind in ("symlink", "other")]
    for e in skipped[:20]:
        path = str(work_dir / e.rel)
        if not any(p.startswith(f"{path}:") for p in g.problems):  # said once is enough
            why = "a symbolic link, not followed" if e.kind == "symlink" else "not a regular file"
            g.problem(f"{path}: {why}")


def _newest_logs(entries: list[Entry]) -> list[Entry]:
    logs = [e for e in entries if e.kind == "file" and not _is_key_material(e.rel)]
    return sorted(logs, key=lambda e: e.mtime, reverse=True)[:PARSL_LOGS]


# ---- versions and connectivity -------------------------------------------------------------


def _os_release() -> str:
    try:  # a system file, a link on Debian (-> ../usr/lib/os-release): followed
        with open("/etc/os-release", "rb") as f:
            text = _text(f.read(16 * 1024))
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return ""


def versions(status_doc: dict[str, Any] | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    engine = (status_doc or {}).get("engine") or {}
    return {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "endpoint": __version__,
        "endpoint_protocol": service.ENDPOINT_PROTOCOL_VERSION,
        "packages": found,
        "os": {"platform": platform.platform(), "release": _os_release()},
        # GlobusComputeEngine: each worker pool's versions, by batch job (from its hello).
        "workers": engine.get("node_info") if isinstance(engine, dict) else None,
    }


def _service_url(cfg: Any) -> str:
    env = service.environment_name(
        getattr(cfg, "environment", None), bool(getattr(cfg, "local_compute_services", False))
    )
    return service.service_url(env)


def _checks(g: _Gathered, cfg: Any, status_doc: dict[str, Any] | None) -> None:
    results = [probes.check_service(_service_url(cfg))]
    broker = (status_doc or {}).get("amqp_broker")
    if isinstance(broker, str) and broker:
        results.append(probes.check_broker(broker))
    else:
        results.append(
            probes.Check(
                "broker",
                None,
                False,
                "skipped: the endpoint has not recorded its broker address in status.json "
                "(it is handed out at registration: start the endpoint once)",
            )
        )
    g.add_json("checks.json", [vars(c) for c in results])
    for c in results:
        if not c.ok:
            g.problem(c.line())
    g.facts["checks"] = [c.line() for c in results]


# ---- the archive ---------------------------------------------------------------------------


def default_output(name: str, now: datetime) -> Path:
    return Path.cwd() / f"compute-endpoint-diagnose-{name}-{now:%Y%m%dT%H%M%SZ}.tar.gz"


def _summary(g: _Gathered, ep_dir: Path, now: datetime) -> str:
    f = g.facts
    journal = f.get("journal") or {}
    lines = [
        f"compute-endpoint diagnose, {now:%Y-%m-%dT%H:%M:%SZ}, container-compute-endpoint "
        f"{__version__} (protocol {service.ENDPOINT_PROTOCOL_VERSION})",
        f"endpoint:  {g.name} ({f.get('endpoint_id') or 'never registered'}) in {ep_dir}",
        f"kind:      {f.get('kind', 'unknown (config not loaded)')}",
        f"state:     {f.get('state')}; {f.get('health')}",
        f"log:       {f.get('log', 'none copied')}",
        f"metrics:   {f.get('metrics', 'off (no metrics_port) or not running')}",
        "journal:   "
        + (
            f"{journal['pending_tasks']} pending tasks, "
            f"{journal['unconfirmed_results']} unconfirmed results"
            if journal.get("present")
            else "none (the endpoint has not run here)"
            if journal.get("present") is False
            else "not read"
        ),
        *(f"check:     {line}" for line in f.get("checks", [])),
        "",
        f"problems ({len(g.problems)}):" if g.problems else "problems: none",
        *(f"  - {p}" for p in g.problems),
        "",
        "members: " + ", ".join(["summary.txt", *g.members]),
    ]
    return "\n".join(lines) + "\n"


def _write(path: Path, top: str, members: dict[str, str], now: datetime) -> None:
    """The archive, created 0600 (never over an existing file or through a link)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w:gz") as tar:
            for name, text in members.items():
                data = text.encode()
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mode, info.mtime = len(data), 0o600, int(now.timestamp())
                tar.addfile(info, io.BytesIO(data))
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def diagnose(target: str | None, output: Path | None = None) -> Bundle:
    """Gather everything about endpoint `target` (NAME_OR_UUID) into one `.tar.gz`."""
    ep_dir = resolve(target)
    now = datetime.now(UTC).replace(microsecond=0)
    started = time.monotonic()
    g = _Gathered(ep_dir.name)
    g.facts["endpoint_id"] = _endpoint_id(g, ep_dir)
    # The environment's secrets (a client secret, ...) are masked wherever they appear.
    g.known.update(secret_values(dict(os.environ)))
    try:
        g.known.update(stored_tokens(user_dir() / service.STORAGE_FILE))
    except (OSError, sqlite3.Error) as e:
        g.problem(f"the token store was not read ({e}): tokens are masked by pattern only")
    cfg = _config(g, ep_dir)
    if cfg is not None:
        g.facts["kind"] = "core (multi-user)" if isinstance(cfg, ManagerConfig) else "user"
    work_dir, log_path = _paths(g, ep_dir, cfg)
    doc = _status(g, ep_dir)
    g.add_json("versions.json", versions(doc))
    _log_tail(g, log_path)
    _journal(g, work_dir)
    _checks(g, cfg, doc)
    listing = list_under(ep_dir)
    if work_dir != ep_dir:
        listing += [
            Entry(PurePosixPath(str(work_dir)) / e.rel, *_rest(e)) for e in list_under(work_dir)
        ]
    g.add("files.txt", _listing(listing))
    _engine_files(g, work_dir)
    log.debug("diagnose gathered %d members in %.1fs", len(g.members), time.monotonic() - started)
    summary = _summary(g, ep_dir, now)
    members = {"summary.txt": summary, **g.members}
    redacted = {name: redact_text(text, g.known) for name, text in members.items()}
    path = (output or default_output(g.name, now)).absolute()
    try:
        _write(path, f"diagnose-{g.name}-{now:%Y%m%dT%H%M%SZ}", redacted, now)
    except OSError as e:
        raise LifecycleError(f"cannot write {path}: {e.strerror or e}") from e
    return Bundle(path, redacted["summary.txt"], list(g.problems))


def _rest(e: Entry) -> tuple[str, int, float]:
    return e.kind, e.size, e.mtime
