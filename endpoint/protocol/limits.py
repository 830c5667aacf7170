"""Size limits on what travels through the endpoint, defined once.

The config models (`endpoint.config`) use them as defaults; the worker and the runtime's
interchange fall back on them when built without a config (tests). Nothing is imported here,
so Parsl workers and config checks alike can read them for free.
"""

#: The largest serialized result a worker sends back (the web service refuses larger ones).
DEFAULT_RESULT_SIZE_LIMIT = 10 * 1024 * 1024
#: The largest task body the endpoint journals and runs; a bigger one gets a TaskTooLarge
#: result instead of being stored and unpacked.
DEFAULT_MAX_TASK_SIZE = 10 * 1024 * 1024
