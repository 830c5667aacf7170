"""GlobusComputeEngine: tasks run on Parsl's HighThroughputExecutor (HTEX).

HTEX brings the batch-system side: a provider (LocalProvider, SlurmProvider, PBSProProvider,
... with a launcher and ``worker_init``) starts *blocks* of worker pools that connect back to
an interchange process, and Parsl's JobStatusPoller scales the blocks between ``min_blocks``
and ``max_blocks``, scaling in after ``max_idletime``. Every HTEX option passes through.

What this engine adds on top:

* **Batching** (`endpoint.engines.htex.batching`): a deep queue travels several tasks per Parsl
  message; a shallow one sends each task alone. Every task still gets exactly one Result.
* **Retries per task**: a lost worker or manager resubmits the task up to
  ``max_retries_on_system_failure`` times; the final ``WorkerLost`` Result lists every
  attempt's traceback. A lost *batch* is first re-run task by task (charging nobody) so that
  only the task that really takes its worker down is charged; tasks that ran before it in
  that batch lost their results with it and run again.
* **Bad state**: when every block fails (or the interchange dies) each outstanding and
  every later task gets an ``EngineFailure`` Result carrying Parsl's reason (block exit
  codes and output), instead of hanging.
* **Fast start**: the interchange starts in `start` and the first poll (which launches
  ``init_blocks``) runs at once rather than one ``strategy_period`` later.
* **Cheap status**: a watcher thread asks the interchange about managers twice a second;
  `status` only reads that snapshot.
* **Containers** (``container_type``): every block's worker pool runs inside the image,
  after an image check and a version probe (`endpoint.engines.htex.containers`).

Parsl's files live under ``<run_dir>/parsl/<label>-HighThroughputExecutor/`` (logs and the
CurveZMQ certificates) and the provider's job scripts under ``<run_dir>/submit_scripts``.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from endpoint.containers.codes import (
    CODE_CONTAINER_FAILED,
    CODE_IMAGE_NOT_FOUND,
    CODE_VERSION_MISMATCH,
    CONTAINER_IMAGE_KEY,
)
from endpoint.containers.spec import container_spec
from endpoint.engines.base import (
    CODE_ENGINE_FAILURE,
    CODE_RESOURCE_SPEC,
    CODE_WORKER_LOST,
    Failure,
    ResultCallback,
    TaskEngine,
    TaskSubmission,
    attempts_report,
    container_refusal,
    engine_error_result,
)
from endpoint.engines.htex import config as htex_config
from endpoint.engines.htex.batching import RUNNER, BatchPolicy, encode_batch
from endpoint.engines.htex.breaker import BlockBreaker
from endpoint.engines.htex.breaker import report as breaker_report
from endpoint.engines.htex.containers import ContainerWorkers
from endpoint.engines.htex.watch import WatcherMixin
from endpoint.errors import BlocksFailing, ContainerError, ImageNotFound, LifecycleError

if TYPE_CHECKING:
    from endpoint.config.htex import ParslEngineConfig

log = logging.getLogger(__name__)

_IDLE_TICK_S = 1.0


@dataclass
class _Job:
    task: TaskSubmission
    priority: float = float("inf")  # Parsl's convention: lower runs sooner
    alone: bool = False  # travels in a batch of one (resource spec, or isolating a crash)
    spec: dict[str, Any] | None = None  # the resource specification, as Parsl validated it
    queued_ns: int = field(default_factory=time.time_ns)
    attempts: list[str] = field(default_factory=list)


@dataclass
class _Batch:
    jobs: list[_Job]


class GlobusComputeEngine(WatcherMixin, TaskEngine):
    """Runs tasks on Parsl's HighThroughputExecutor; see the module docstring.

    Built from a validated `GlobusComputeEngineConfig`, which checks every option and holds
    the defaults. Beyond the options every engine has (``working_dir``, ``run_in_sandbox``,
    ``allowed_serializers``, ``max_retries_on_system_failure``, ``result_size_limit``):

    ``provider``
        ``{type: <Parsl provider>, ...}`` with an optional nested ``launcher``; by default
        one LocalProvider block (``init_blocks: 1, min_blocks: 0, max_blocks: 1``).
    ``address``
        Where workers reach the interchange: an address, or ``{type: address_by_..., ...}``.
        Defaults to 127.0.0.1 for a LocalProvider, otherwise to Parsl's (every address).
    ``job_status_kwargs`` / ``strategy``
        Parsl's JobStatusPoller: ``max_idletime`` (120 s), ``strategy`` (``simple``) and
        ``strategy_period`` (5 s); the top-level ``strategy`` is the deprecated spelling.
    ``task_batch_size``
        Most tasks per Parsl message when the queue is deep (default 64; 1 disables
        batching).
    ``container_type`` / ``container_uri`` / ``container_cmd_options``
        Run every block's worker pool in a container (docker, podman, podman-hpc,
        apptainer, singularity, or a custom command template); see `endpoint.containers`.
    ``htex_options``
        Any other HighThroughputExecutor option, by its Parsl name (in YAML, directly under
        ``engine:``).
    """

    def __init__(self, config: ParslEngineConfig) -> None:
        super().__init__(config)
        self.container = container_spec(
            config.container_type, config.container_uri, config.container_cmd_options
        )
        self.task_batch_size = config.task_batch_size
        # JobStatusPoller's arguments, by their Parsl names.
        self.scaling = config.job_status_kwargs.poller_kwargs()
        self.breaker_config = config.block_breaker
        self.executor = self._build_executor(config)
        self.executor.poll_interval_override = config.job_status_kwargs.status_polling_interval
        self._init_state()

    # ---- configuration ---------------------------------------------------------------

    @classmethod
    def _executor_class(cls) -> type:
        from endpoint.engines.htex.parsl_glue import EngineExecutor

        return EngineExecutor

    def _executor_options(self, config: ParslEngineConfig) -> dict[str, Any]:
        """The executor's own keywords from the model (GlobusMPIEngine adds its fields)."""
        return htex_config.executor_options(config.htex_options)

    def _build_executor(self, config: ParslEngineConfig) -> Any:
        cls = self._executor_class()
        kwargs = self._executor_options(config)
        # Parsl's handler gives up at the first failed block when init_blocks is 0; the
        # block breaker (`_check_blocks`) replaces it unless a config asks for Parsl's.
        own_handler = "block_error_handler" not in kwargs
        built_provider = htex_config.build_provider(config.provider)
        executor = htex_config.make_executor(
            cls,
            label=f"{self.label}-{getattr(cls, 'parsl_name', cls.__name__)}",
            provider=built_provider,
            address=htex_config.resolve_address(config.address, built_provider),
            encrypted=config.encrypted,
            **kwargs,
        )
        self._containers: ContainerWorkers | None = None
        if self.container is not None:
            inner = executor.launch_cmd
            if "launch_cmd" not in kwargs:
                inner = htex_config.container_worker_launch_cmd(inner)
            # Wrapped in start(), which knows the directory to mount.
            self._containers = ContainerWorkers(self.container, inner)
        elif "launch_cmd" not in kwargs:
            worker_init = str(getattr(built_provider, "worker_init", "") or "")
            executor.launch_cmd = htex_config.worker_launch_cmd(executor.launch_cmd, worker_init)
            if worker_init.strip():
                # endpoint.worker.launch checks the worker's Python minor, Parsl and dill
                # itself, and lets a per-user environment run its submitter's Python minor.
                executor._check_python_mismatch = False
        if "interchange_launch_cmd" not in kwargs:
            executor.interchange_launch_cmd = htex_config.interchange_launch_cmd()
        if own_handler:
            executor.block_check = self._check_blocks
        return executor

    def _init_state(self) -> None:
        self._cond = threading.Condition(self._lock)
        self._policy = BatchPolicy(self.task_batch_size)
        self._queue: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._front_seq = itertools.count(-1, -1)  # requeued work sorts first
        self._immediate: list[tuple[str, bytes]] = []
        self._batches: dict[int, _Batch] = {}  # in flight, in send order
        self._outstanding = 0  # tasks submitted and not yet answered
        self._submitted = 0
        self._broken: str | None = None
        self._broken_code = CODE_ENGINE_FAILURE
        self._verifying = False  # a containerized pool's version probe is outstanding
        self._stopping = False
        self._stop_now = False
        self._managers: list[dict[str, Any]] = []
        self._packages: dict[str, dict[str, str | None]] = {}
        self._capacity = 0
        self._watch_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._poller: Any = None
        self._parsl_stopped = False
        self._options_wire: dict[str, Any] = {}
        self._block_breaker = BlockBreaker(self.breaker_config.max_failures)
        self._connected_blocks: set[str] = set()
        self._manager_blocks: dict[str, str] = {}  # every manager seen -> its block id
        self._retry_after: float | None = None  # set when the block breaker trips

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self, *, endpoint_id: str, run_dir: Path, on_result: ResultCallback) -> None:
        self._prepare(endpoint_id, run_dir, on_result)
        self._options_wire = asdict(self.options)
        base = Path(run_dir).resolve()
        parsl_dir, scripts = base / "parsl", base / "submit_scripts"
        for path in (parsl_dir, scripts):
            path.mkdir(parents=True, exist_ok=True)
        self.executor.run_dir = str(parsl_dir)
        self.executor.provider.script_dir = str(scripts)
        self.executor.engine_outstanding = lambda: self._outstanding
        if not self._prepare_containers(base):
            self._parsl_stopped = True  # nothing of Parsl's was started
            self._start_thread(self._dispatch_forever, "dispatch")  # answers with the reason
            return
        try:
            self.executor.start()  # waits for the interchange to bind its ports
        except Exception as e:
            self._stop_parsl(graceful=False)
            raise LifecycleError(f"{self.label}: Parsl's executor failed to start: {e}") from e
        from endpoint.engines.htex.parsl_glue import GatedPoller

        self._poller = GatedPoller(self.executor, **self.scaling)
        if self._containers is not None:
            self._verifying = True
            self._containers.send_probe(self.executor, self._on_probe)
        self._start_thread(self._dispatch_forever, "dispatch")
        self._start_thread(self._watch, "watch")
        log.info("%s started (Parsl files in %s)", self.label, parsl_dir)

    def _start_thread(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=f"{self.label}-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _prepare_containers(self, run_dir: Path) -> bool:
        """Wrap the worker command in the container; False when no block could start."""
        if self._containers is None:
            return True
        try:
            self._containers.prepare(self.executor, run_dir, self.label)
        except ContainerError as e:
            code = CODE_IMAGE_NOT_FOUND if isinstance(e, ImageNotFound) else CODE_CONTAINER_FAILED
            self._mark_broken(f"{self.label}: {e}", code)
            return False
        return True

    def _on_probe(self, problem: str | None, failure: BaseException | None) -> None:
        """The containerized pool answered the version probe (Parsl's result thread)."""
        if failure is not None:  # e.g. every block died: the image cannot run a worker
            hint = self._containers.startup_hint() if self._containers else ""
            self._mark_broken(self._bad_state_reason(failure) + hint)
            return
        if problem is not None:
            self._mark_broken(f"{self.label}: {problem}", CODE_VERSION_MISMATCH)
            return
        with self._cond:
            self._verifying = False
            self._cond.notify_all()
        spec = self.container.describe() if self.container else "?"
        log.info("%s: workers in %s match this endpoint", self.label, spec)

    def wait_ready(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: self._broken is not None or (not self._verifying and self._capacity > 0),
                timeout,
            )

    def failure(self) -> Failure | None:
        with self._cond:
            if self._broken is None:
                return None
            return Failure(self._broken_code, self._broken, self._retry_after)

    def submit(self, task: TaskSubmission) -> None:
        self._check_open()
        job, refusal = self._admit(task)
        with self._cond:
            if self._closed:
                raise LifecycleError(f"{self.label} is shut down")
            if refusal is None and self._broken is not None:
                refusal = self._fail_packet(_Job(task), self._broken_code, self._broken)
            if refusal is not None:
                self._immediate.append((task.task_id, refusal))
            else:
                self._push(job)
                self._outstanding += 1
                self._submitted += 1
            self._cond.notify()

    def shutdown(self, *, wait: bool = True) -> None:
        with self._cond:
            self._closed = True
            self._stopping = True
            self._stop_now = self._stop_now or not wait
            self._cond.notify_all()
            if wait:
                # The dispatcher keeps going until every submitted task is answered.
                self._cond.wait_for(lambda: self._outstanding == 0 or self._stop_now)
        self._watch_stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=None if wait else 1.0)
        self._stop_parsl(graceful=wait)
        if self._containers is not None:
            self._containers.cleanup()

    def _stop_parsl(self, *, graceful: bool) -> None:
        """Stop scaling, then blocks, then the interchange (it answers the scale-in)."""
        with self._cond:
            poller, self._poller = self._poller, None
            if self._parsl_stopped:
                return
            self._parsl_stopped = True
        if graceful:
            if poller is not None:
                poller.close()  # scales in every block through the provider...
            if self.executor.bad_state_is_set:
                self._cancel_blocks()  # ...except in bad state, where Parsl leaves them
            self.executor.shutdown()
            return
        if poller is not None:
            poller.stop_timer(timeout=1.0)
        # Kill the blocks directly rather than through the interchange, which is not
        # waited for; then the interchange itself.
        self._cancel_blocks()
        self.executor.shutdown(timeout=2.0)

    def _cancel_blocks(self) -> None:
        from endpoint.engines.htex.parsl_glue import unfinished_jobs

        jobs = unfinished_jobs(self.executor)
        if not jobs:
            return
        try:
            self.executor.provider.cancel(jobs)
        except Exception as e:  # best effort: the provider may already have lost them
            log.warning("%s: cancelling blocks %s failed: %s", self.label, jobs, e)

    # ---- queue -------------------------------------------------------------------------

    def _admit(self, task: TaskSubmission) -> tuple[_Job, bytes | None]:
        """The job for ``task``, or the error Result refusing it."""
        job = _Job(task)
        spec = task.resource_specification
        if not spec and not self._needs_resource_spec():
            return job, None
        if spec and CONTAINER_IMAGE_KEY in spec:
            return job, container_refusal(task, type(self).__name__, self.endpoint_id)
        job.spec = dict(spec or {})
        try:
            # Parsl's validation may fill in derived keys (MPI: num_ranks from the others).
            self.executor.validate_resource_spec(job.spec)
            job.priority = float(job.spec.get("priority", float("inf")))
        except Exception as e:
            message = f"resource_specification {spec!r} is not valid for {type(self).__name__}: {e}"
            return job, self._fail_packet(job, CODE_RESOURCE_SPEC, message)
        job.alone = True
        return job, None

    def _needs_resource_spec(self) -> bool:
        return False

    def _push(self, job: _Job, front: bool = False) -> None:
        seq = next(self._front_seq) if front else next(self._seq)
        heapq.heappush(self._queue, (job.priority, seq, job))

    def _pop_batch(self, size: int) -> _Batch:
        jobs = [heapq.heappop(self._queue)[2]]
        if not jobs[0].alone:
            while len(jobs) < size and self._queue and not self._queue[0][2].alone:
                jobs.append(heapq.heappop(self._queue)[2])
        return _Batch(jobs)

    def _target_in_flight(self) -> int:
        """Parsl messages to keep in flight: every worker slot plus one waiting behind it.

        The spare message per slot sits in the interchange, which hands it to a worker
        the moment one finishes, so workers never wait a round trip through the engine.
        """
        from endpoint.engines.htex.parsl_glue import expected_slots

        # With no manager connected yet, go by what the blocks asked for should provide.
        return 2 * (self._capacity if self._capacity > 0 else expected_slots(self.executor))

    # ---- the dispatcher thread ---------------------------------------------------------

    def _dispatch_forever(self) -> None:
        try:
            while self._dispatch_once():
                pass
        except BaseException:
            log.exception("%s: dispatcher crashed; failing outstanding tasks", self.label)
            self._mark_broken(f"{self.label}'s dispatcher thread crashed")
            self._fail_queued()

    def _dispatch_once(self) -> bool:
        with self._cond:
            while True:
                if self._stop_now:
                    return False
                self._note_bad_state()
                immediate, self._immediate = self._immediate, []
                broken = self._broken is not None
                batches = [] if broken else self._plan()
                if immediate or batches or (broken and self._queue):
                    break
                if self._stopping and self._outstanding == 0:
                    return False
                self._cond.wait(_IDLE_TICK_S)
        for task_id, packed in immediate:
            self._deliver(task_id, packed)
        for batch in batches:
            self._send(batch)
        if broken:
            self._fail_queued()
        return True

    def _plan(self) -> list[_Batch]:
        """Take batches off the queue for the free room in flight (lock held)."""
        if self._verifying:
            return []  # nothing runs in a container before its versions are known to match
        free = self._target_in_flight() - len(self._batches)
        batches = []
        for size in self._policy.sizes(len(self._queue), free):
            if not self._queue:
                break
            batch = self._pop_batch(size)
            self._batches[id(batch)] = batch
            batches.append(batch)
        return batches

    def _send(self, batch: _Batch) -> None:
        items = [
            (j.task.task_id, j.task.packed_task, j.task.result_serializers) for j in batch.jobs
        ]
        context: dict[str, Any] = {
            "task_executor": {"f": RUNNER, "a": (), "k": {"options": self._options_wire}}
        }
        spec = batch.jobs[0].spec
        if spec:
            context["resource_spec"] = spec
        try:
            future = self.executor.submit_payload(context, encode_batch(items))
        except Exception as e:  # bad state (Parsl raises its reason) or closed sockets
            self._on_failure(batch, e)
            return
        future.add_done_callback(functools.partial(self._on_done, batch))

    # ---- results (Parsl's result thread) -----------------------------------------------

    def _on_done(self, batch: _Batch, future: Any) -> None:
        try:
            results, seconds = future.result()
            if not isinstance(results, list) or not results:
                raise TypeError(f"batch runner returned {type(results).__name__}")
        except BaseException as e:
            self._on_failure(batch, e)
            return
        done, rest = batch.jobs[: len(results)], batch.jobs[len(results) :]
        with self._cond:
            self._policy.observe(float(seconds), len(done))
            for job in reversed(rest):  # not started: back to the front, uncharged
                self._push(job, front=True)
        for job, packed in zip(done, results, strict=False):
            self._deliver(job.task.task_id, packed)
        self._finish(batch, answered=len(done))

    def _finish(self, batch: _Batch, answered: int) -> None:
        with self._cond:
            self._batches.pop(id(batch), None)
            self._outstanding -= answered
            self._cond.notify_all()

    def _on_failure(self, batch: _Batch, exc: BaseException) -> None:
        from endpoint.engines.htex.parsl_glue import is_bad_state, is_lost_worker

        if is_bad_state(exc) or self.executor.bad_state_is_set:
            reason = self._mark_broken(self._bad_state_reason(exc))
            self._fail_batch(batch, CODE_ENGINE_FAILURE, reason)
            return
        if len(batch.jobs) > 1:
            log.warning(
                "%s: a batch of %d tasks was lost (%s); re-running them one by one",
                self.label,
                len(batch.jobs),
                exc,
            )
            self._requeue(batch, alone=True)
            return
        job = batch.jobs[0]
        job.attempts.append(self._describe_attempt(exc))
        if len(job.attempts) <= self.max_retries:
            log.info(
                "%s: retrying task %s (attempt %d)",
                self.label,
                job.task.task_id,
                len(job.attempts) + 1,
            )
            self._requeue(batch, alone=job.alone)
            return
        code = CODE_WORKER_LOST if is_lost_worker(exc) else CODE_ENGINE_FAILURE
        what = "The task was lost to a system failure"
        report = attempts_report(what, job.attempts, self.max_retries)
        summary = attempts_report(what, job.attempts, self.max_retries, details=False)
        self._fail_batch(batch, code, report, summary)

    def _describe_attempt(self, exc: BaseException) -> str:
        """An attempt's reason; a lost worker pool's names its batch job and what ended it."""
        from endpoint.engines.htex.jobinfo import lost_pool_context
        from endpoint.engines.htex.parsl_glue import describe, is_lost_worker

        text = describe(exc)
        if not is_lost_worker(exc):
            return text
        context = lost_pool_context(exc, self.executor, self._manager_blocks)
        return f"{context}\n{text}" if context else text

    def _requeue(self, batch: _Batch, *, alone: bool) -> None:
        with self._cond:
            for job in reversed(batch.jobs):
                job.alone = alone
                self._push(job, front=True)
            self._batches.pop(id(batch), None)
            self._cond.notify_all()

    def _fail_batch(
        self, batch: _Batch, code: str, message: str, summary: str | None = None
    ) -> None:
        for job in batch.jobs:
            self._deliver(job.task.task_id, self._fail_packet(job, code, message, summary))
        self._finish(batch, answered=len(batch.jobs))

    def _fail_packet(self, job: _Job, code: str, message: str, summary: str | None = None) -> bytes:
        task_id, ep = job.task.task_id, self.endpoint_id
        return engine_error_result(task_id, code, message, ep, job.queued_ns, summary)

    # ---- bad state ---------------------------------------------------------------------

    def _bad_state_reason(self, exc: BaseException | None = None) -> str:
        cause = self.executor.executor_exception or exc
        detail = f"{type(cause).__name__}: {cause}".strip() if cause else "unknown reason"
        reason = f"{self.label} cannot run tasks; Parsl's executor is in a bad state: {detail}"
        return reason + block_files(self.executor)

    def _mark_broken(self, reason: str, code: str = CODE_ENGINE_FAILURE) -> str:
        with self._cond:
            if self._broken is None:
                self._broken, self._broken_code = reason, code
                log.error("%s", reason)
            self._cond.notify_all()
            return self._broken

    def _check_blocks(self, states: dict[str, Any]) -> None:
        """(Parsl's poller, after each status poll) Trip the block breaker after too many
        blocks failed in a row."""
        if self.executor.bad_state_is_set or self._parsl_stopped:
            return
        if not self._block_breaker.observe(states, self._connected_blocks):
            return
        backoff = self.breaker_config.backoff
        reason = breaker_report(self.label, self.executor, self._block_breaker.streak, backoff)
        with self._cond:
            self._retry_after = backoff
        self._mark_broken(reason)
        # Stops Parsl's scaling (no more jobs) and fails what the interchange holds; those
        # tasks get `reason`, which `_mark_broken` kept.
        self.executor.set_bad_state_and_fail_all(BlocksFailing(reason))
        with self._cond:
            self._cond.notify_all()

    def _note_bad_state(self) -> None:
        """(lock held) Notice Parsl's bad state even when no task was in flight."""
        if self._broken is None and self.executor.bad_state_is_set:
            self._broken = self._bad_state_reason()
            log.error("%s", self._broken)

    def _fail_queued(self) -> None:
        with self._cond:
            doomed = [entry[2] for entry in self._queue]
            self._queue.clear()
            reason = self._broken or f"{self.label} is broken"
            code = self._broken_code
        for job in doomed:
            self._deliver(job.task.task_id, self._fail_packet(job, code, reason))
        with self._cond:
            self._outstanding -= len(doomed)
            self._cond.notify_all()


def block_files(executor: Any) -> str:
    """Where to look: each block's batch job id, submit script and output files.

    Parsl's reasons name neither the job nor its files ("Check the stdout/stderr logs in the
    submit_scripts directory"); a user of a failing cluster config needs both.
    """
    from endpoint.engines.htex.breaker import block_paths

    script_dir = getattr(getattr(executor, "provider", None), "script_dir", None)
    lines = []
    for block_id, job_id in sorted((getattr(executor, "blocks_to_job_id", None) or {}).items()):
        paths = block_paths(executor, block_id, job_id)
        files = ", ".join(f"{what} {path}" for what, path in paths)
        lines.append(f"  block {block_id}: job {job_id}" + (f" ({files})" if files else ""))
    if not lines:
        return f"\nSubmit scripts and job output: {script_dir}" if script_dir else ""
    return "\nBlocks:\n" + "\n".join(lines)


__all__ = ["GlobusComputeEngine"]
