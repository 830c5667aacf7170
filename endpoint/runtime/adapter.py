"""The running user endpoint: adapters around the Interchange state machine.

One thread (the caller of `run`) owns the Interchange, the journal and every decision. The AMQP
I/O thread and the engine's threads only push events onto `self._events`; the loop drains them
in batches, so one journal transaction and one multiple-ack cover many tasks at high rates.
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from endpoint.amqp.pool import SessionFactory, SessionPool
from endpoint.amqp.queues import EndpointQueues
from endpoint.amqp.session import AmqpSession, Session
from endpoint.engines.base import Engine, Failure
from endpoint.host.loop import Connected, Disconnected, EventLoop, Every, Wake, run_timers
from endpoint.host.pidlock import TOUCH_EVERY_S, PidLock
from endpoint.host.proctitle import set_title
from endpoint.host.redact import public_address
from endpoint.host.status import write_status
from endpoint.protocol.messages import EPStatusReport, pack
from endpoint.protocol.results import error_result
from endpoint.runtime import faults
from endpoint.runtime.idle import IdleTracker
from endpoint.runtime.interchange import RECENTLY_DONE, Delivery, Interchange, Plan
from endpoint.runtime.journal import Journal
from endpoint.runtime.metrics import NO_METRICS, NoMetrics
from endpoint.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

MAX_BATCH = 1024
REPUBLISH_EVERY_S = 1.0
DRAIN_TIMEOUT_S = 30.0
FINAL_HEARTBEAT_WAIT_S = 3.0
# A broken engine is replaced at most this often; past it, tasks fail fast with its reason.
MAX_ENGINE_RESTARTS = 3
RESTART_WINDOW_S = 600.0
#: The block breaker's back-off doubles at each trip in a row, up to this (or the configured
#: back-off, when larger); a connected worker resets it.
MAX_BACKOFF_S = 3600.0


@dataclass(frozen=True)
class Confirms:
    keys: list[str]
    ok: bool


@dataclass(frozen=True)
class Result:
    task_id: str
    packed: bytes


@dataclass(frozen=True)
class ConsumerChanged:
    """The broker cancelled the task consumer (its queue was deleted), or it consumes again."""

    consuming: bool


class EndpointRuntime(EventLoop):
    def __init__(
        self,
        *,
        endpoint_id: str,
        ep_dir: Path,
        engine: Engine,
        queues: EndpointQueues,
        settings: RuntimeSettings,
        config_text: str,
        pid_lock: PidLock | None = None,
        engine_factory: Callable[[], Engine] | None = None,
        title: str = "",
        sessions: SessionFactory = AmqpSession,
        metrics: NoMetrics = NO_METRICS,
    ) -> None:
        super().__init__()
        self.metrics = metrics  # endpoint/runtime/metrics.py; reads `last_status` when scraped
        self.last_status: dict[str, Any] = {}
        self.endpoint_id = endpoint_id
        self.ep_dir = ep_dir
        # `paths.endpoint_dir`: where the journal and the engine's files (task dirs, Parsl
        # run dirs, job scripts) live; the pid file and status.json stay in ep_dir so that
        # `list`, `stop` and `health` find them.
        self.settings = settings
        self.work_dir = settings.work_dir or ep_dir
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.engine = engine
        self.engine_factory = engine_factory
        self._engine_generation = 0
        self._engine_restarts: list[float] = []
        # Set while the engine restart budget is spent (heartbeats, status.json, health).
        self._breaker: dict[str, Any] | None = None
        self._trips = 0  # block breaker trips in a row (engines that never got a worker)
        self._backoff_until = 0.0  # monotonic; while the block breaker is open
        self.queues = queues
        self.heartbeat_period = settings.heartbeat_period
        self.pid_lock = pid_lock
        self.config_text = config_text
        self.journal = Journal(self.work_dir / "journal.db")
        self._started = time.time()
        self._last_words = ""
        self._fault = (
            faults.from_env()
        )  # a no-op outside the fault suite (endpoint/runtime/faults.py)
        self._last_words_confirmed = threading.Event()
        self.idle = IdleTracker(settings.idle_heartbeats_soft, settings.idle_heartbeats_hard)
        self.title = title or f"Globus Compute Endpoint ({endpoint_id})"
        self.stop_reason = ""
        # status.json (endpoint/host/status.py): written only by the loop thread.
        self._state = "starting"
        self._last_heartbeat: float | None = None
        self.ix = Interchange(
            endpoint_id,
            window=4,  # set from the engine once it has started (`_refresh_window`)
            allowed_functions=settings.allowed_functions,
            max_retries_on_system_failure=settings.max_retries_on_system_failure,
            max_task_size=settings.max_task_size,
            remember_done=max(RECENTLY_DONE, 2 * settings.prefetch_count),
        )
        self._pool = SessionPool(self, sessions)
        self.consumer, self.publisher, self.hb_session = self._sessions(queues, settings)
        self._session_up = {s.name: False for s in self._pool.all()}
        self._consuming = True  # False while the broker has cancelled the task consumer

    def _sessions(
        self, queues: EndpointQueues, settings: RuntimeSettings
    ) -> tuple[Session, Session, Session]:
        """(tasks, results, heartbeats); roles whose URLs match share one connection."""
        dead_after = settings.heartbeat_threshold
        # Tasks first: the consuming role configures a session its URL shares with others.
        consumer = self._pool.session(
            queues.tasks.connection_url,
            "amqp-tasks",
            consume_queue=queues.tasks.queue,
            prefetch_count=settings.prefetch_count,
            dead_after=dead_after,
            # A deleted task queue is declared again and bound to the exchange tasks come by.
            consume_exchange=queues.tasks.exchange or None,
        )
        publisher = self._pool.session(
            queues.results.connection_url, "amqp-results", dead_after=dead_after
        )
        beats = self._pool.session(
            queues.heartbeats.connection_url, "amqp-heartbeats", dead_after=dead_after
        )
        return consumer, publisher, beats

    # ---- SessionEvents (called on AMQP I/O threads) ---------------------------------------
    def on_connected(self, session: Session, generation: int) -> None:
        self._events.put(Connected(session))

    def on_disconnected(self, session: Session, generation: int, reason: str) -> None:
        self._events.put(Disconnected(session))

    def on_delivery(self, generation: int, tag: int, headers: dict[str, Any], body: bytes) -> None:
        self._events.put(Delivery(generation, tag, headers, body))

    def on_consumer(self, session: Session, generation: int, consuming: bool, reason: str) -> None:
        if session is self.consumer:
            self._events.put(ConsumerChanged(consuming))

    def on_confirms(self, keys: list[str], ok: bool) -> None:
        if ok and self._last_words in keys:
            self._last_words_confirmed.set()
        self._events.put(Confirms(keys, ok))

    # ---- engine callback (any thread) ----------------------------------------------------
    def _on_result(self, task_id: str, packed: bytes) -> None:
        self._events.put(Result(task_id, packed))

    def _results_of(self, generation: int) -> Callable[[str, bytes], None]:
        """The result callback of one engine; a replaced engine's late results are dropped."""

        def deliver(task_id: str, packed: bytes) -> None:
            if generation == self._engine_generation:
                self._on_result(task_id, packed)

        return deliver

    def _start_engine(self) -> None:
        self.engine.start(
            endpoint_id=self.endpoint_id,
            run_dir=self.work_dir,
            on_result=self._results_of(self._engine_generation),
        )

    def _check_engine(self, unsubmitted: AbstractSet[str] = frozenset()) -> None:
        """Replace a broken engine (its interchange died, every block failed, ...).

        Its running tasks are lost with it, except `unsubmitted`: tasks the interchange
        already counts as running but that are about to be handed to the new engine."""
        failure = self.engine.failure()
        if failure is None or self.engine_factory is None:
            return
        now = time.monotonic()
        if failure.retry_after_s is not None:
            if not self._backoff_over(failure, now):
                return
        elif not self._within_restart_budget(failure, now):
            return
        self._replace_engine(failure, unsubmitted)

    def _within_restart_budget(self, failure: Failure, now: float) -> bool:
        """Whether the engine may be replaced now; opens the breaker when it may not."""
        self._engine_restarts = [t for t in self._engine_restarts if now - t < RESTART_WINDOW_S]
        if len(self._engine_restarts) >= MAX_ENGINE_RESTARTS:
            # The breaker is open: no new engine (so no new batch jobs) until the window
            # passes; the broken engine answers every task with its reason, fast.
            self._open_breaker(failure.reason, self._engine_restarts[0] + RESTART_WINDOW_S - now)
            return False
        self._engine_restarts.append(now)
        return True

    def _backoff_over(self, failure: Failure, now: float) -> bool:
        """The block breaker tripped in the engine: no new engine (so no new batch jobs)
        until its back-off passed, then one new engine tries again."""
        if self._breaker is None:
            self._trips += 1
            base = float(failure.retry_after_s or 0)
            backoff = min(base * 2 ** (self._trips - 1), max(MAX_BACKOFF_S, base))
            self._backoff_until = now + backoff
            self._open_breaker(failure.reason, backoff, blocks=True)
        return now >= self._backoff_until

    def _replace_engine(self, failure: Failure, unsubmitted: AbstractSet[str]) -> None:
        assert self.engine_factory is not None  # _check_engine returned without one
        self._breaker = None
        log.error("engine failed (%s); starting a new one", failure.reason)
        old, self._engine_generation = self.engine, self._engine_generation + 1
        old.shutdown(wait=False)
        running = sorted(self.ix.running - unsubmitted)
        # Start the new engine first: failing the lost tasks frees window slots, and the
        # tasks that fill them must go to an engine that can run them.
        self.engine = self.engine_factory()
        self._start_engine()
        self._refresh_window()
        message = f"the engine failed: {failure.reason}"
        lost = [(t, error_result(t, failure.code, message, self.endpoint_id)) for t in running]
        self._execute(self.ix.on_results(lost))

    def _open_breaker(self, reason: str, retry_in_s: float, *, blocks: bool = False) -> None:
        if self._breaker is not None:
            return
        if blocks:
            log.error(
                "the block breaker tripped (%d in a row); no new batch jobs for %.0f s, or "
                "until `restart`: %s",
                self._trips,
                retry_in_s,
                reason,
            )
        else:
            log.error(
                "engine failed %d times in %.0f s; no new engine (and no new batch jobs) for "
                "%.0f s, or until `restart`: %s",
                MAX_ENGINE_RESTARTS,
                RESTART_WINDOW_S,
                retry_in_s,
                reason,
            )
        self._breaker = {
            "state": "open",
            "kind": "blocks" if blocks else "engine",
            "trips": self._trips if blocks else 1,
            "failures": MAX_ENGINE_RESTARTS + 1,
            # The head (what failed, the job ids) matters more than the last job's output.
            "reason": reason[:4000],
            "retry_after_unix": time.time() + retry_in_s,
        }
        self._write_status()

    # ---- lifecycle ------------------------------------------------------------------------
    def run(self) -> None:
        set_title(self.title)
        self.metrics.start(self)  # first: a port already taken stops the start cleanly
        self._start_engine()
        self._refresh_window()
        self._execute(self.ix.recover(self.journal.load()))
        self._pool.start()
        self._state = "running"
        self._write_status()
        log.info("endpoint %s running", self.endpoint_id)
        try:
            self._loop()
        finally:
            self._shutdown()

    def _loop(self) -> None:
        timers = [
            Every(self.heartbeat_period, self._beat, time.monotonic() + self.heartbeat_period),
            Every(REPUBLISH_EVERY_S, self._maintain),
        ]
        if self.pid_lock is not None:
            timers.append(Every(TOUCH_EVERY_S, self.pid_lock.touch))
        run_timers(self._stop, timers, self._step)

    def _beat(self) -> None:
        self._heartbeat(active=True)
        self._check_idle()

    def _maintain(self) -> None:
        self._check_engine()
        self._refresh_window()
        self._execute(self.ix.republish())

    def _step(self, timeout: float) -> None:
        events = self.next_events(timeout, MAX_BATCH)
        if events:
            self._execute(self._plan(events))

    def _plan(self, events: list[object]) -> Plan:
        """One plan for a batch: runs of deliveries and of results go to the interchange
        together (one journal transaction, one multiple-ack), in arrival order otherwise."""
        plan = Plan()
        deliveries: list[Delivery] = []
        results: list[tuple[str, bytes]] = []

        def flush() -> None:
            if deliveries:
                plan.extend(self.ix.on_deliveries(deliveries))
                deliveries.clear()
            if results:
                plan.extend(self.ix.on_results(results))
                results.clear()

        for ev in events:
            match ev:
                case Delivery():
                    deliveries.append(ev)
                case Result(task_id, packed):
                    results.append((task_id, packed))
                case _:
                    flush()
                    self._on_event(ev, plan)
        flush()
        return plan

    def _on_event(self, ev: object, plan: Plan) -> None:
        match ev:
            case Confirms(keys, ok):
                plan.extend(self.ix.on_confirms(keys, ok))
            case ConsumerChanged(consuming):
                self._consumer_changed(consuming)
            case Connected(session):
                if session is self.consumer:
                    self._consuming = True  # a new connection consumes from its start
                self._session_changed(session, up=True)
                if session is self.hb_session:
                    self._heartbeat(active=True)  # say hello as soon as we can be heard
                if session is self.publisher:
                    plan.extend(self.ix.on_connected())
            case Disconnected(session):
                self._session_changed(session, up=False)
                if session is self.publisher:
                    self.ix.on_disconnected()
            case Wake():
                pass
            case _:
                log.error("unknown event %r", ev)

    def _execute(self, plan: Plan) -> None:
        """Carry out a plan in the order the promises need: journal, then ack, then
        publish (a result is journaled before it leaves), then hand tasks to the engine."""
        self.metrics.on_plan(plan)
        if plan.add_tasks:
            self._fault("delivered")
        if plan.journal_writes:
            self._journal(plan)
        self._acknowledge(plan)
        if plan.publish:
            self.publisher.publish([self.queues.results.outgoing(k, b) for k, b in plan.publish])
            self._fault("published")
        if plan.submit:
            self._submit(plan)

    def _journal(self, plan: Plan) -> None:
        started = set(plan.started)
        added = {t.task_id for t in plan.add_tasks}
        with self.journal.batch() as b:
            b.add_tasks(plan.add_tasks, started)
            b.mark_started(started - added)
            b.set_results(plan.results)
            b.forget(plan.forget)
        if plan.add_tasks:
            self._fault("journaled")
        if plan.results:
            self._fault("result-journaled")

    def _acknowledge(self, plan: Plan) -> None:
        for generation, tag in plan.rejects:
            self.consumer.reject(generation, tag)
        latest: dict[int, int] = {}
        for generation, tag in plan.acks:
            latest[generation] = max(tag, latest.get(generation, 0))
        for generation, tag in latest.items():
            self.consumer.ack(generation, tag, multiple=True)
        if latest:
            self._fault("acked")

    def _submit(self, plan: Plan) -> None:
        if self.engine.failure() is not None:
            # Replace it before handing it more tasks (if the budget allows); this plan's tasks
            # never reached it and go to the new engine.
            self._check_engine({s.task_id for s in plan.submit})
        for sub in plan.submit:
            try:
                self.engine.submit(sub)
            except Exception as e:  # an engine that refuses must not take the loop down
                log.exception("engine refused task %s", sub.task_id)
                why = f"failed to start task: {e!r}"
                packed = error_result(sub.task_id, "UNKNOWN_TASK_FAILURE", why, self.endpoint_id)
                self._on_result(sub.task_id, packed)

    # ---- heartbeats ---------------------------------------------------------------------
    def _heartbeat(self, active: bool) -> None:
        engine_status = self._engine_status()
        if self._trips and int(engine_status.get("total_workers") or 0) > 0:
            self._trips = 0  # workers connect again: the next trip starts from the base
        state: dict[str, Any] = dict(engine_status)
        state.update(self.ix.status())
        state.update(self._ep_info())
        state.update(heartbeat_period=self.heartbeat_period, active=active)
        if self._breaker is not None:
            state["engine_breaker"] = self._breaker
        report = EPStatusReport(endpoint_id=self.endpoint_id, global_state=state)
        key = f"heartbeat:{time.monotonic_ns()}"
        if not active:
            self._last_words = key
        self.hb_session.publish([self.queues.heartbeats.outgoing(key, pack(report))])
        # A heartbeat queued while the broker is away proves nothing: only count sent ones.
        if self._session_up.get(self.hb_session.name):
            self._last_heartbeat = time.time()
        self._write_status(engine_status)

    def _engine_status(self) -> dict[str, Any]:
        try:
            return dict(self.engine.status())
        except Exception as e:
            log.warning("engine status failed: %s", e)
            return {}

    # ---- status.json (health checks) ----------------------------------------------------
    def _session_changed(self, session: Session, up: bool) -> None:
        if self._session_up.get(session.name) != up:
            self._session_up[session.name] = up
            self.metrics.session_changed(session.name, up)
            self._write_status()

    def _consumer_changed(self, consuming: bool) -> None:
        if consuming != self._consuming:
            self._consuming = consuming
            self._write_status()

    def _write_status(self, engine_status: dict[str, Any] | None = None) -> None:
        doc = {
            "pid": os.getpid(),
            "endpoint_id": self.endpoint_id,
            "state": self._state,
            # Tasks in and results out are what a user waits on; heartbeats ride on them.
            "amqp_connected": all(
                self._session_up[s.name] for s in (self.consumer, self.publisher)
            ),
            "amqp_sessions": dict(self._session_up),
            # The broker may cancel the consumer of a connected session (its queue deleted).
            "amqp_consuming": self._consuming,
            "last_heartbeat_unix": self._last_heartbeat,
            "heartbeat_period": self.heartbeat_period,
            "engine": self._engine_status() if engine_status is None else engine_status,
            "interchange": self.ix.status(),
            "engine_breaker": self._breaker,
            # Where the broker is, never who logs in (`compute-endpoint diagnose` checks it).
            "amqp_broker": public_address(self.queues.tasks.connection_url),
            "updated_unix": time.time(),
            "metrics": self.metrics.where(),
        }
        self.last_status = doc
        try:
            write_status(self.ep_dir, doc)
        except OSError as e:  # a full disk must not stop the endpoint; health turns stale
            log.warning("could not write %s/status.json: %s", self.ep_dir, e)

    def _refresh_window(self) -> None:
        """Follow the engine's capacity as blocks and workers come and go."""
        try:
            target = self.engine.inflight_target()
        except Exception as e:  # a status hiccup must not stop the loop; keep the old window
            log.warning("engine capacity unknown: %s", e)
            return
        if target != self.ix.window:
            self._execute(self.ix.set_window(target))

    def _check_idle(self) -> None:
        c = self.ix.counters
        # A task leaves ix.tasks only once its result is confirmed by the broker.
        reason = self.idle.tick(c["received"], c["completed"], len(self.ix.tasks))
        set_title(self.title + self.idle.title_hint(self.heartbeat_period))
        if reason:
            log.info("idle shutdown: %s", reason)
            self.stop_reason = reason
            self._stop.set()

    def _ep_info(self) -> dict[str, Any]:
        return {
            "posix_username": getpass.getuser(),
            "posix_uid": os.getuid(),
            "posix_gid": os.getgid(),
            "posix_groups": os.getgroups(),
            "posix_pid": os.getpid(),
            "posix_sid": os.getsid(0),
            "posix_ppid": os.getppid(),
            "config_raw": self.config_text,
            "start_iso": datetime.fromtimestamp(self._started, UTC).isoformat(),
            "start_unix": self._started,
        }

    # ---- shutdown -----------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Stop taking tasks, let running ones finish, flush results, say goodbye."""
        set_title(self.title + " [shutdown in progress]")
        log.info("stopping: %s", self.ix.status())
        self._state = "stopping"
        self._write_status()
        self.ix.stop_accepting()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        # Unstarted journaled tasks stay in the journal and run at the next start.
        self.ix.pending.clear()
        while (self.ix.running or self.ix.unconfirmed) and time.monotonic() < deadline:
            self._step(0.2)
            if not self.ix.unconfirmed and self.ix.to_republish and self.ix.connected:
                self._execute(self.ix.republish())
        # The I/O thread runs queued calls in order, so this publish goes out before stop()'s close;
        # waiting for the broker's confirm also covers a session that is just reconnecting.
        self._heartbeat(active=False)
        if not self._last_words_confirmed.wait(FINAL_HEARTBEAT_WAIT_S):
            log.warning("the final heartbeat was not confirmed in %ss", FINAL_HEARTBEAT_WAIT_S)
        self._pool.stop()
        self.metrics.stop()  # before the last status.json, which then names no metrics port
        self._state = "stopped"
        self._session_up = dict.fromkeys(self._session_up, False)
        self._write_status()
        self.engine.shutdown(wait=False)
        self.journal.close()
        log.info("endpoint %s stopped", self.endpoint_id)
