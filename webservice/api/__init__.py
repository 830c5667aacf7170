"""HTTP routes, one module per resource; `ROUTERS` is what the app mounts."""

from __future__ import annotations

from webservice.api import bench, endpoints, functions, meta, oauth, policies, submit, tasks

ROUTERS = [
    meta.router,
    oauth.router,
    functions.router,
    endpoints.router,
    submit.router,
    tasks.router,
    bench.router,
    policies.router,
]
