"""The drain, scale and worker benchmarks' quick modes run end to end, so the benchmarks cannot rot.

Only the shape of its output is checked (every figure of every engine, ours and the official
one): no test asserts a duration or a rate.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ("tasks_per_s", "steady_tasks_per_s", "cpu_s_per_1k", "peak_rss_mb")
LINE = re.compile(r"^drain\.(\w+)\.(\w+) ours=[\d.]+ official=[\d.]+ ratio=[\d.]+$")

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


# A slope may be negative (memory returned), a ratio of a zero figure infinite.
SCALE_LINE = re.compile(
    r"^scale\.(\w+)\.(\w+) ours=-?[\d.]+ official=-?[\d.]+ ratio=(-?[\d.]+|-?inf)$"
)
SCALE_FIGURES = {
    "tasks": ("tasks_per_s", "peak_rss_mb", "rss_slope_mb_per_10k"),
    "groups": ("group_p50_s", "group_p95_s", "service_rss_mb", "endpoint_rss_mb"),
    "manager": (
        "first_result_p50_s",
        "first_result_p95_s",
        "manager_pss_mb",
        "pss_per_user_endpoint_mb",
    ),
    "bigargs": ("mb_per_s", "endpoint_peak_rss_mb", "service_peak_rss_mb"),
}


def run_quick(bench: str, peer_python: Path) -> str:
    """Run `bench/BENCH --quick`; its stdout (the run must succeed)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / bench), "--quick", "--peer-python", str(peer_python)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-12000:]
    return proc.stdout


@pytest.mark.timeout(900)
def test_drain_bench_quick_prints_every_figure(peer_python: Path) -> None:
    out = run_quick("drain_bench.py", peer_python)
    seen = {m.groups() for m in map(LINE.match, out.splitlines()) if m}
    expected = {(engine, fig) for engine in ("thread", "process", "gce") for fig in FIGURES}
    assert expected <= seen, out


@pytest.mark.timeout(900)
def test_scale_bench_quick_prints_every_figure(peer_python: Path) -> None:
    out = run_quick("scale_bench.py", peer_python)
    seen = {m.groups()[:2] for m in map(SCALE_LINE.match, out.splitlines()) if m}
    expected = {(s, fig) for s, figs in SCALE_FIGURES.items() for fig in figs}
    assert expected <= seen, out


WORKER_LINE = re.compile(r"^worker\.(\w+)\.us_per_task memo=[\d.]+ fresh=[\d.]+ ratio=[\d.]+$")


@pytest.mark.timeout(300)
def test_worker_bench_quick_prints_every_kind(peer_python: Path) -> None:
    out = run_quick("worker_bench.py", peer_python)
    seen = {m.group(1) for m in map(WORKER_LINE.match, out.splitlines()) if m}
    assert seen == {"noop", "args", "closure"}, out
