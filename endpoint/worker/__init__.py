"""What runs inside a worker: decode a task, enforce the serializer allowlist, run, encode."""

from endpoint.worker.execute import TaskTimedOut, WorkerOptions, execute_task

__all__ = ["TaskTimedOut", "WorkerOptions", "execute_task"]
