"""The user config template and schema that `configure` writes for a core endpoint.

The template runs each submitter's workers in a Python environment matching them (their SDK's
Python minor and SDK version, plus a ``requirements`` option), built with uv as their user and
cached in their own directory (`endpoint.manager.userenv`). The schema types the options a
submitter may set, so a wrong value is refused with a message naming it.
"""

from __future__ import annotations

from typing import Any

from endpoint.manager.userenv import MAX_REQUIREMENTS

#: Heartbeats without work before an idle user endpoint stops (soft: nothing outstanding),
#: and the limit even with results still undelivered; 5 minutes and 48 hours at 30 s.
IDLE_SOFT = 10
IDLE_HARD = 5760

# Jinja2 rendered per user by the manager; user values arrive JSON-quoted (injection-safe),
# and `|default()` leaves an unset option empty (YAML null).
USER_TEMPLATE = f"""\
# Rendered for each user endpoint from the options a submitter sends
# (Executor(user_endpoint_config={{...}})); see user_config_schema.json for what they may set.
#
# Workers run in a Python environment made for the submitter: the Python minor version and
# Globus Compute SDK version their SDK reports, plus the packages of their `requirements`
# option (the lines of a requirements.txt). It is built with uv, as the submitter's local
# user, on the first task that needs it, and reused by every later one with the same
# versions and requirements (cached in ~/.globus_compute/uv-envs/, with uv's downloads in
# ~/.globus_compute/uv-cache/, both private to the user). When the endpoint's own
# Python already matches and there are no requirements, workers start in it directly.
# uv finds the Python versions on PATH (add yours in user_environment.yaml); it never
# downloads one. To turn per-user environments off, use
#     worker_init: {{% raw %}}{{{{ worker_init|default() }}}}{{% endraw %}}
# instead of the user_python_environment(...) line below.
endpoint_setup: {{{{ endpoint_setup|default() }}}}

engine:
  type: GlobusComputeEngine
  max_workers_per_node: 1
  provider:
    type: LocalProvider
    init_blocks: 1
    min_blocks: 0
    max_blocks: 1
    worker_init: {{{{ user_python_environment(_GC.user_runtime, requirements|default(none),
      worker_init|default(none)) }}}}

# Stop an unused user endpoint after {IDLE_SOFT} quiet heartbeats (5 minutes at 30 s); the next
# task starts it again.
idle_heartbeats_soft: {{{{ idle_heartbeats_soft|default({IDLE_SOFT}) }}}}
idle_heartbeats_hard: {{{{ idle_heartbeats_hard|default({IDLE_HARD}) }}}}
"""

USER_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "endpoint_setup": {"type": "string"},
        "worker_init": {"type": "string"},
        "requirements": {"type": "string", "minLength": 1, "maxLength": MAX_REQUIREMENTS},
        "idle_heartbeats_soft": {"type": "integer", "minimum": 0, "maximum": IDLE_HARD},
        "idle_heartbeats_hard": {"type": "integer", "minimum": 0, "maximum": 10 * IDLE_HARD},
    },
    "additionalProperties": True,
}
