"""ProcessPoolEngine: tasks run in a pool of long-lived worker processes.

Each worker is a fresh interpreter (``python -m endpoint.worker``) holding one end of a
socket pair; a single dispatcher thread in the endpoint feeds tasks to workers and reads
their results. Because the engine always knows which task each worker holds, a worker that
dies (``os._exit``, SIGKILL, the OOM killer) costs only the task it was running: that task is
retried up to ``max_retries_on_system_failure`` times on a fresh worker and otherwise answered
with one ``WorkerLost`` error Result listing every attempt; tasks merely queued behind it are
requeued without losing an attempt, and the other workers carry on untouched. (Python's
``ProcessPoolExecutor`` instead breaks the whole pool and fails every outstanding task.)

Scheduling: a worker gets a task only when it is idle, so the first free worker takes the
next queued task, as with ``concurrent.futures`` and Parsl. Nothing is prefetched onto a busy
worker: a task sent to a socket cannot be taken back, and one parked behind a long task would
wait that task out while other workers sat idle. The price is one local round trip (result in,
next task out) per task; the dispatcher only touches the wake-up pipe when it is asleep.

Containers: with ``container_type`` (and ``container_uri``) every worker process runs in its
own container of that image (`endpoint.engines.process_launch`); the pool then checks at
start that the image is present and, in each worker's hello, that the worker's versions
match the endpoint's. Either failure answers the pool's tasks with a clear error Result
(``ContainerImageNotFound``, ``WorkerVersionMismatch``) rather than losing workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from endpoint.containers.codes import CODE_VERSION_MISMATCH
from endpoint.containers.spec import container_spec
from endpoint.engines.base import (
    CODE_ENGINE_FAILURE,
    CODE_WORKER_LOST,
    Failure,
    PoolEngine,
    ResultCallback,
    TaskSubmission,
    engine_error_result,
)
from endpoint.engines.process_launch import (
    ContainerLauncher,
    LocalLauncher,
    failure_code,
    worker_env,
)
from endpoint.errors import ContainerError, LifecycleError

if TYPE_CHECKING:
    from endpoint.config.engines import ProcessPoolEngineConfig

log = logging.getLogger(__name__)

# Workers that die before saying hello this many times in a row mean something is wrong with
# the environment (not with a task): stop respawning instead of looping.
MAX_STARTUP_FAILURES = 3
STOP_GRACE_S = 5.0
_IDLE_TICK_S = 1.0


@dataclass
class _Job:
    task: TaskSubmission
    queued_ns: int = field(default_factory=time.time_ns)
    attempts: list[str] = field(default_factory=list)


class _Worker:
    """The engine's view of one worker process."""

    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        self.proc = proc
        self.conn = conn
        self.pidfd = _pidfd_open(proc.pid)
        self.jobs: deque[_Job] = deque()  # sent and unanswered: the running one, if any
        self.sent = 0
        self.ready = False
        self.dead = False


def _pidfd_open(pid: int) -> int | None:
    # A pidfd becomes readable when the process exits, even if a grandchild still holds the
    # worker's socket open; without one (old kernels) exits are found by polling.
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def default_process_workers() -> int:
    return os.cpu_count() or 1


class ProcessPoolEngine(PoolEngine):
    def __init__(self, config: ProcessPoolEngineConfig) -> None:
        workers = config.max_workers
        super().__init__(
            config, max_workers=default_process_workers() if workers is None else workers
        )
        self.max_tasks_per_child = config.max_tasks_per_child
        self._queue: deque[_Job] = deque()
        self._immediate: list[tuple[str, bytes]] = []
        self._workers: list[_Worker] = []
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._sleeping = False
        self._woken = False
        self._stopping = False
        self._stop_now = False
        self._startup_failures = 0
        self._next_spawn_at = 0.0
        self._broken: str | None = None
        self._broken_code = CODE_ENGINE_FAILURE
        self._ready = threading.Event()  # a worker said hello, or the pool failed
        self._thread: threading.Thread | None = None
        spec = container_spec(
            config.container_type, config.container_uri, config.container_cmd_options
        )
        self.container = spec
        # Late-bound so that tests can swap the environment workers get.
        local = LocalLauncher(env=lambda: _worker_env())
        self._launcher = local if spec is None else ContainerLauncher(spec)

    # ---- public interface --------------------------------------------------------------

    def start(self, *, endpoint_id: str, run_dir: Path, on_result: ResultCallback) -> None:
        self._prepare(endpoint_id, run_dir, on_result)
        # The pool is built here rather than in __init__ so that the processes and pipes
        # belong to the process that runs the endpoint (after any daemonizing).
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._prepare_launcher(run_dir)
        self._top_up()
        self._thread = threading.Thread(
            target=self._dispatch_forever, name=f"{self.label}-dispatch", daemon=True
        )
        self._thread.start()

    def submit(self, task: TaskSubmission) -> None:
        self._check_open()
        refusal = self._refusal(task)
        with self._lock:
            # Checked again under the lock: a task slipping in after the dispatcher decided
            # it was drained would never get a result.
            if self._closed:
                raise LifecycleError(f"{self.label} is shut down")
            if refusal is None and self._broken is not None:
                refusal = engine_error_result(
                    task.task_id, self._broken_code, self._broken, self.endpoint_id
                )
            if refusal is None:
                self._queue.append(_Job(task))
            else:
                self._immediate.append((task.task_id, refusal))
            wake = self._sleeping and not self._woken
            self._woken = self._woken or wake
            orphaned = refusal is not None and not self._dispatcher_alive()
            if orphaned:
                self._immediate.pop()
        if orphaned:
            # Only after the dispatcher crashed: still answer, but never from inside submit().
            threading.Thread(target=self._deliver, args=(task.task_id, refusal)).start()
        elif wake:
            self._wake()

    def _prepare_launcher(self, run_dir: Path) -> None:
        try:
            self._launcher.prepare(run_dir, self.label)
        except ContainerError as e:
            self._set_broken(f"{self.label}: {e}", failure_code(e))

    def _set_broken(self, reason: str, code: str = CODE_ENGINE_FAILURE) -> None:
        with self._lock:
            if self._broken is None:
                self._broken, self._broken_code = reason, code
        log.error("%s", reason)
        self._ready.set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def failure(self) -> Failure | None:
        broken, code = self._broken, self._broken_code
        return None if broken is None else Failure(code, broken)

    def _dispatcher_alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def _counts(self) -> tuple[int, int, int]:
        with self._lock:
            pending = len(self._queue) + sum(max(0, len(w.jobs) - 1) for w in self._workers)
            running = sum(1 for w in self._workers if w.jobs)
            idle = sum(1 for w in self._workers if w.ready and not w.jobs)
        return pending, running, idle

    def shutdown(self, *, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            self._stopping = True
            self._stop_now = self._stop_now or not wait
            workers = list(self._workers) if not wait else []
        # Signal the workers from here, not only from the dispatcher: if the interpreter
        # exits right after this call, the (daemon) dispatcher may never run again.
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.proc.terminate()
        if self._thread is None:
            return
        self._wake()
        if wait:
            self._thread.join()

    # ---- worker processes --------------------------------------------------------------

    def _top_up(self) -> None:
        """Start workers until the pool is full again, unless stopping or backing off."""
        with self._lock:
            wanted = self.max_workers - len(self._workers)
            # Queued work still needs workers while a graceful shutdown drains.
            needed = not self._stopping or bool(self._queue)
            if self._stop_now or self._broken or not needed:
                return
        if wanted <= 0 or time.monotonic() < self._next_spawn_at:
            return
        for _ in range(wanted):
            if not self._spawn():
                return

    def _startup_failed(self, reason: str) -> None:
        self._startup_failures += 1
        # Back off (0.1 s, 0.2 s, ... up to 5 s) so a broken environment does not spin.
        delay = min(5.0, 0.1 * 2 ** (self._startup_failures - 1))
        self._next_spawn_at = time.monotonic() + delay
        if self._startup_failures >= MAX_STARTUP_FAILURES:
            self._give_up_if_failing(reason)

    def _spawn(self) -> bool:
        parent_sock, child_sock = socket.socketpair()
        options = json.dumps(asdict(self.options))
        try:
            proc = self._launcher.spawn(
                child_sock, options, self.max_tasks_per_child, self.options.run_dir
            )
        except OSError as e:
            parent_sock.close()
            log.warning("%s: cannot start a worker process: %s", self.label, e)
            self._startup_failed(f"cannot start a worker process: {e}")
            return False
        finally:
            child_sock.close()
        worker = _Worker(proc, Connection(parent_sock.detach()))
        assert self._selector is not None
        self._selector.register(worker.conn.fileno(), selectors.EVENT_READ, worker)
        if worker.pidfd is not None:
            self._selector.register(worker.pidfd, selectors.EVENT_READ, worker)
        with self._lock:
            self._workers.append(worker)
        log.debug("%s: started worker process %s", self.label, proc.pid)
        return True

    def _give_up_if_failing(self, reason: str) -> None:
        with self._lock:
            if any(not w.dead for w in self._workers):
                return  # some workers still run tasks; just stop adding more
            hint = self._launcher.startup_hint()
            self._broken = f"{self.label} has no working worker processes: {reason}{hint}"
            doomed = list(self._queue)
            self._queue.clear()
        log.error("%s", self._broken)
        self._ready.set()
        for job in doomed:
            self._fail(job, CODE_ENGINE_FAILURE, self._broken)

    # ---- the dispatcher thread ---------------------------------------------------------

    def _dispatch_forever(self) -> None:
        try:
            while self._dispatch_once():
                pass
        except BaseException:
            log.exception("%s: dispatcher crashed; failing outstanding tasks", self.label)
            self._fail_everything("the engine's dispatcher thread crashed")
        finally:
            self._stop_workers()

    def _dispatch_once(self) -> bool:
        self._top_up()
        with self._lock:
            if self._stop_now:
                return False
            immediate, self._immediate = self._immediate, []
            sends = self._plan_sends()
            if self._stopping and not immediate and self._drained():
                return False
            self._sleeping = not (immediate or sends)
        for task_id, packed in immediate:
            self._deliver(task_id, packed)
        for worker, job in sends:
            self._send(worker, job)
        assert self._selector is not None
        events = self._selector.select(_IDLE_TICK_S if self._sleeping else 0)
        with self._lock:
            self._sleeping = False
            woken, self._woken = self._woken, False
        if woken:
            self._drain_wake_pipe()
        self._handle(events)
        return True

    def _plan_sends(self) -> list[tuple[_Worker, _Job]]:
        """Move queued jobs onto idle workers, in queue order (lock held)."""
        sends: list[tuple[_Worker, _Job]] = []
        for worker in self._workers:
            if not self._queue:
                break
            job = self._take_for(worker)
            if job is not None:
                sends.append((worker, job))
        return sends

    def _take_for(self, worker: _Worker) -> _Job | None:
        """The next queued job, now assigned to ``worker``, if it is idle (lock held)."""
        if self._stop_now or not self._queue or not self._is_idle(worker):
            return None
        job = self._queue.popleft()
        worker.jobs.append(job)
        worker.sent += 1
        return job

    def _is_idle(self, worker: _Worker) -> bool:
        # Only an idle worker gets a task (see the module docstring): never queue behind one.
        if not worker.ready or worker.dead or worker.jobs:
            return False
        return self.max_tasks_per_child is None or worker.sent < self.max_tasks_per_child

    def _drained(self) -> bool:
        return not self._queue and not any(w.jobs for w in self._workers)

    def _send(self, worker: _Worker, job: _Job) -> None:
        task = job.task
        try:
            worker.conn.send((task.task_id, task.packed_task, task.result_serializers))
        except (OSError, ValueError) as e:
            # The worker is going or gone; make sure of it so its exit accounts for the job.
            log.warning("%s: cannot send task %s to worker: %s", self.label, task.task_id, e)
            worker.proc.kill()

    def _handle(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        exited: list[_Worker] = []
        for key, _ in events:
            worker = key.data
            if worker is None:
                continue  # the wake-up pipe, already drained
            if key.fd == worker.pidfd or not self._receive(worker):
                exited.append(worker)
        for worker in exited:
            self._reap(worker)
        if not events:
            self._poll_exits()

    def _receive(self, worker: _Worker) -> bool:
        """Read one message from a readable worker; False once it is gone.

        One per wake-up: the selector is level-triggered and reports the socket again if more
        is waiting, which is cheaper than asking (`poll`) after every message.
        """
        try:
            data = worker.conn.recv_bytes()
        except (EOFError, OSError):
            return False
        self._on_message(worker, data)
        return True

    def _on_message(self, worker: _Worker, data: bytes) -> None:
        if not worker.ready:
            problem = self._launcher.check_hello(data)
            if problem is not None:
                self._fail_everything(problem, CODE_VERSION_MISMATCH)
                return
            worker.ready = True  # hello
            self._startup_failures = 0
            self._ready.set()
            return
        with self._lock:
            job = worker.jobs.popleft() if worker.jobs else None
            # Refill before delivering: the worker should not wait on the result callback.
            refill = None if job is None else self._take_for(worker)
        if refill is not None:
            self._send(worker, refill)
        if job is None:
            log.error("%s: worker %s sent a result nobody asked for", self.label, worker.proc.pid)
            return
        self._deliver(job.task.task_id, data)

    def _receive_leftovers(self, worker: _Worker) -> None:
        # Results it sent before dying still count. poll() first: a grandchild that inherited
        # the socket could keep a blocking read waiting forever.
        try:
            while not worker.conn.closed and worker.conn.poll(0):
                self._on_message(worker, worker.conn.recv_bytes())
        except (EOFError, OSError):
            pass

    def _poll_exits(self) -> None:
        for worker in list(self._workers):
            if worker.pidfd is None and worker.proc.poll() is not None:
                self._reap(worker)

    def _reap(self, worker: _Worker) -> None:
        """Account for a worker that exited: retry or fail its task, requeue the rest."""
        if worker.dead:
            return
        worker.dead = True
        self._receive_leftovers(worker)
        self._close(worker)
        returncode = self._wait(worker)
        how = self._launcher.describe_exit(returncode)
        reason = f"worker process {worker.proc.pid} {how}"
        if not worker.ready:
            log.warning("%s: %s before it was ready", self.label, reason)
        elif worker.jobs or returncode != 0:
            log.warning("%s: %s", self.label, reason)
        with self._lock:
            self._workers.remove(worker)
            lost = self._requeue(worker, how)
        for job in lost:
            self._fail(job, CODE_WORKER_LOST, self._lost_message(job))
        if not worker.ready:
            self._startup_failed(reason)
        # The next dispatcher pass (_top_up) starts its replacement.

    def _requeue(self, worker: _Worker, how: str) -> list[_Job]:
        """Put the dead worker's jobs back in the queue (lock held); return those that failed.

        ``how`` is how it ended (`LocalLauncher.describe_exit`), which goes into the attempt.
        """
        if not worker.jobs:
            return []
        running, *waiting = worker.jobs
        worker.jobs.clear()
        self._queue.extendleft(reversed(waiting))  # never started: no attempt lost
        running.attempts.append(
            f"worker process {worker.proc.pid} died while running the task: it {how}"
        )
        if len(running.attempts) > self.max_retries:
            return [running]
        self._queue.appendleft(running)
        log.info(
            "%s: retrying task %s (attempt %d)",
            self.label,
            running.task.task_id,
            len(running.attempts) + 1,
        )
        return []

    def _lost_message(self, job: _Job) -> str:
        lines = [
            f"The task's worker process died on all {len(job.attempts)} attempt(s)"
            f" (max_retries_on_system_failure={self.max_retries}):"
        ]
        lines += [f"  attempt {n}: {reason}" for n, reason in enumerate(job.attempts, 1)]
        return "\n".join(lines)

    def _fail(self, job: _Job, code: str, message: str) -> None:
        task_id = job.task.task_id
        packed = engine_error_result(task_id, code, message, self.endpoint_id, job.queued_ns)
        self._deliver(task_id, packed)

    def _fail_everything(self, reason: str, code: str = CODE_ENGINE_FAILURE) -> None:
        """Answer every task with ``code`` and stop the workers: the pool cannot run any."""
        with self._lock:
            self._broken, self._broken_code = reason, code
            doomed = [job for w in self._workers for job in w.jobs] + list(self._queue)
            self._queue.clear()
            for w in self._workers:
                w.jobs.clear()
            immediate, self._immediate = self._immediate, []
            workers = list(self._workers)
        log.error("%s: %s", self.label, reason)
        self._ready.set()
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.proc.terminate()  # reaped by the dispatcher; none has a job now
        for task_id, packed in immediate:
            self._deliver(task_id, packed)
        for job in doomed:
            self._fail(job, code, reason)

    # ---- plumbing ----------------------------------------------------------------------

    def _wake(self) -> None:
        # A full pipe already wakes the dispatcher; a closed one means it is gone.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _close(self, worker: _Worker) -> None:
        assert self._selector is not None
        for fd in (worker.pidfd, None if worker.conn.closed else worker.conn.fileno()):
            if fd is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(fd)
        worker.conn.close()
        if worker.pidfd is not None:
            os.close(worker.pidfd)
            worker.pidfd = None

    def _wait(self, worker: _Worker, grace: float = 2.0) -> int | None:
        try:
            return worker.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            worker.proc.kill()  # its socket closed but it lingers: finish it
            return worker.proc.wait()

    def _stop_workers(self) -> None:
        with self._lock:
            workers = list(self._workers)
            self._workers.clear()
            graceful = not self._stop_now
        for worker in workers:
            worker.dead = True
            if graceful:
                with contextlib.suppress(OSError, ValueError):
                    worker.conn.send(None)
            else:
                worker.proc.terminate()
        deadline = time.monotonic() + (STOP_GRACE_S if graceful else 1.0)
        for worker in workers:
            self._wait(worker, max(0.0, deadline - time.monotonic()))
            self._close(worker)
        self._close_wake_pipe()
        self._launcher.cleanup()

    def _close_wake_pipe(self) -> None:
        if self._selector is not None:
            self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1


def _worker_env() -> dict[str, str]:
    return worker_env()


__all__ = ["ProcessPoolEngine", "default_process_workers"]
