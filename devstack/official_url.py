"""Point the official tools at a web service on any port.

The official SDK's `local` environment is fixed at localhost:5000; a stack on another port
(benchmarks and HPC tests that run on the host network, beside other stacks) hands the official
tools it starts a sitecustomize that answers the SDK's service-URL lookup with its own URL.
"""

from __future__ import annotations

import os
from pathlib import Path

#: A sitecustomize for the official tools' Python: when the SDK's client module loads, its
#: service-URL lookup answers COMPUTE_OFFICIAL_SERVICE_URL. Of the official endpoint only the
#: manager needs it (its user endpoint gets the broker's address from the manager).
OFFICIAL_URL_HOOK = """
import importlib.abc, importlib.machinery, os, sys

class _PointAtService(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        url = os.environ.get("COMPUTE_OFFICIAL_SERVICE_URL")
        if name != "globus_compute_sdk.sdk.client" or not url:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module
        def exec_module(module):
            load(module)
            module.get_web_service_url = lambda *_a, **_k: url
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _PointAtService())
"""


def official_url_env(root: Path, url: str) -> dict[str, str]:
    """Variables that point the official tools started with them (the endpoint's manager, SDK
    scripts) at the service on `url`, through a sitecustomize written under `root`."""
    hook = root / "official-url-hook"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(OFFICIAL_URL_HOOK)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "COMPUTE_OFFICIAL_SERVICE_URL": url}
