"""appliance/prometheus: the scrape config passes Prometheus's own checker, and the dashboard
asks only for metrics the endpoint and the web service define (a renamed metric must not leave
an empty panel behind)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "appliance" / "prometheus"
#: Suffixes Prometheus adds to a counter's or a histogram's base name.
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _defined_metrics() -> set[str]:
    names = set()
    for source, prefix in (
        (ROOT / "endpoint" / "runtime" / "metrics.py", "compute_endpoint"),
        (ROOT / "webservice" / "metrics.py", "compute_service"),
    ):
        text = source.read_text()
        names |= {f"{prefix}_{n}" for n in re.findall(r'\{PREFIX\}_([a-z_]+)"', text)}
        names |= {
            f"{prefix}_{n}"
            for n in re.findall(r'_(?:gauge|counter|histogram)\(\s*"([a-z_]+)"', text)
        }
    return names


def test_the_scrape_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: tools/install-prereqs --all installs Debian's prometheus"
    out = subprocess.run(
        [promtool, "check", "config", str(HERE / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = {
        j["job_name"]
        for j in yaml.safe_load((HERE / "prometheus.yml").read_text())["scrape_configs"]
    }
    assert jobs == {"compute-webservice", "compute-endpoint"}


def test_the_dashboard_asks_only_for_defined_metrics() -> None:
    dashboard = json.loads((HERE / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(compute_(?:endpoint|service)_[a-z_]+)", e)}
    defined = _defined_metrics()
    unknown = {m for m in used if not any(m.removesuffix(s) in defined for s in ("", *_SUFFIXES))}
    assert used and not unknown, sorted(unknown)
