"""A container-first Globus Compute endpoint, grouped by the process each part runs in.

- `cli/`: the `compute-endpoint` command; parses arguments and is the only part that prints.
- `admin/`: what each verb does (configure, start, stop, list, delete, boot, login), and the
  web service client used to register.
- `manager/`: a manager (core) endpoint: decodes start commands, maps identities, renders
  user endpoint configs and spawns user endpoints. Runs no tasks.
- `runtime/`: one user endpoint: the interchange (the pure core), the adapter that runs it on
  AMQP and an engine, the one runtime builder, the journal, idle shutdown, the fault hook.
- `engines/`: what runs tasks: thread and process pools, container routing, and `htex/`
  (Parsl's HighThroughputExecutor and MPIExecutor).
- `worker/`: runs one task in a worker process or container.
- `containers/`: container specs, argv builders and the soft router.
- `config/`: the configuration models and loaders.
- `host/`: directories, the pid lock and states, daemonizing, hooks, logs, status and health,
  process titles and the event-loop plumbing, shared by every endpoint process.
- `amqp/`: the reconnecting AMQP session, sessions shared by URL, typed queue credentials.
- `protocol/`: the wire formats (messages, serialization, results, the manager's pipes).
- `errors.py`: the one exception tree.

Which folder may import which is in the README ("Layout") and checked by
`tests/unit/test_layout.py`.
"""

__version__ = "0.1.0"
