"""Run one task where a worker runs it, and always answer with a packed Result.

`execute_task` is the whole life of a task inside a worker: set the task's environment and
working directory, decode the Task, deserialize the function and arguments (honouring the
serializer allowlist), call the function under an optional ``GC_TASK_TIMEOUT``, serialize the
result and pack a Result. It never raises; every failure becomes an error Result whose
``error_details.code`` is one of:

``RemoteExecutionError``
    The user's function raised (or its result could not be serialized). ``data`` is the
    traceback with this module's frames removed, so users see only their own frames.
``DeserializationError``
    The function or its arguments could not be deserialized, or were serialized with a
    strategy that ``allowed_serializers`` refuses; ``data`` says which and lists the allowed
    ones. (The official endpoint reports this as RemoteExecutionError with our traceback;
    a dedicated code lets the service and users tell "your payload" from "your code".)
``TaskTimeout``
    The function ran longer than ``GC_TASK_TIMEOUT`` seconds.
``MaxResultSizeExceeded``
    The serialized result is larger than ``WorkerOptions.result_size_limit``.
``CouldNotExecuteUserTaskError``
    The body is not a Task message, ``GC_TASK_TIMEOUT`` is not a number, or the working
    directory could not be prepared.

The timeout is enforced preemptively where possible: in a process's main thread a SIGALRM
timer interrupts even a blocking ``sleep``; in other threads an asynchronous exception is
injected (``PyThreadState_SetAsyncExc``), which lands at the next Python bytecode, so a call
blocked inside C code is interrupted only when it returns.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import threading
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from endpoint.errors import ConfigError, ProtocolError, SerializationError
from endpoint.protocol.limits import DEFAULT_RESULT_SIZE_LIMIT
from endpoint.protocol.messages import (
    ACTOR_WORKER,
    STATE_EXEC_END,
    STATE_EXEC_START,
    Result,
    Task,
    pack,
    transition,
    unpack,
)
from endpoint.protocol.results import SDK_PROTOCOL_VERSION, env_details
from endpoint.protocol.serialize import (
    Allowlist,
    parse_allowlist,
    serialize_result,
    unpack_task_buffer,
)
from endpoint.worker.memo import PayloadMemo
from endpoint.worker.taskenv import EnvSlot

log = logging.getLogger(__name__)

__all__ = [
    "CODE_BAD_TASK",
    "CODE_DESERIALIZATION",
    "CODE_REMOTE",
    "CODE_RESULT_TOO_BIG",
    "CODE_TIMEOUT",
    "SDK_PROTOCOL_VERSION",
    "TaskTimedOut",
    "WorkerOptions",
    "execute_task",
]

CODE_REMOTE = "RemoteExecutionError"
CODE_DESERIALIZATION = "DeserializationError"
CODE_TIMEOUT = "TaskTimeout"
CODE_RESULT_TOO_BIG = "MaxResultSizeExceeded"
CODE_BAD_TASK = "CouldNotExecuteUserTaskError"
USER_MESSAGE_REMOTE = "An error occurred during the execution of this task"

ENV_TASK_ID = "GC_TASK_UUID"
ENV_SANDBOX = "GC_TASK_SANDBOX_DIR"
ENV_TIMEOUT = "GC_TASK_TIMEOUT"


@dataclass(frozen=True)
class WorkerOptions:
    endpoint_id: str
    run_dir: str  # absolute working dir; the task chdirs here
    run_in_sandbox: bool = False  # chdir to run_dir/<task_id> instead, and set GC_TASK_SANDBOX_DIR
    allowed_serializers: tuple[str, ...] | None = None
    result_size_limit: int = DEFAULT_RESULT_SIZE_LIMIT


class TaskTimedOut(BaseException):
    """Raised inside the user's function when its time is up.

    A BaseException so that a user's ``except Exception`` cannot swallow it.
    """


class _TaskFailure(Exception):
    """Internal: ends a task with an error Result."""

    def __init__(self, code: str, data: str, user_message: str | None = None) -> None:
        super().__init__(data)
        self.code = code
        self.data = data
        self.user_message = user_message if user_message is not None else data.strip()


def execute_task(
    task_id: str, packed_task: bytes, result_serializers: list[str], options: WorkerOptions
) -> bytes:
    """Run one task and return its packed Result; never raises."""
    started = transition(STATE_EXEC_START, ACTOR_WORKER)
    error: dict[str, str] | None = None
    try:
        _enter_task()
        try:
            _set_task_environment(task_id, options)
            data = _run(packed_task, result_serializers, options)
        finally:
            _leave_task()
    except _TaskFailure as failure:
        data = failure.data
        error = {"code": failure.code, "user_message": failure.user_message}
    except BaseException as e:  # our own bug: still answer, never take the worker down
        log.exception("%s: internal error while executing the task", task_id)
        data = f"Internal endpoint error while executing the task: {e!r}"
        error = {"code": CODE_BAD_TASK, "user_message": data}
    if error is not None:
        log.debug("%s: task failed with %s", task_id, error["code"])
    result = Result(
        task_id=task_id,
        data=data,
        details=env_details(options.endpoint_id),
        error_details=error,
        task_statuses=[started, transition(STATE_EXEC_END, ACTOR_WORKER)],
    )
    try:
        return pack(result)
    except (ValueError, TypeError):
        # Text that cannot be encoded (lone surrogates in an exception message, say):
        # escape it rather than lose the answer.
        result.data = _encodable(result.data)
        if result.error_details is not None:
            result.error_details = {k: _encodable(v) for k, v in result.error_details.items()}
        return pack(result)


def _encodable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _run(packed_task: bytes, result_serializers: list[str], options: WorkerOptions) -> str:
    task = _decode_task(packed_task)
    fn, args, kwargs = _deserialize(task.task_buffer, options.allowed_serializers)
    value = _call(fn, args, kwargs, _task_timeout())
    return _encode_result(value, result_serializers, options.result_size_limit)


# ---------------------------------------------------------------------------------------------
# Environment and working directory
# ---------------------------------------------------------------------------------------------

# cwd and os.environ belong to the whole process, and the thread engine runs tasks
# concurrently: the first task in saves the process's state and the last one out restores
# it, so overlapping tasks never "restore" each other's task directories.
_state_lock = threading.Lock()
_active_tasks = 0
_saved_cwd: str | None = None
_saved_env: dict[Any, Any] = {}
# Set for every task with a new value: through slots, not os.environ, which leaks in glibc.
_TASK_ID_SLOT = EnvSlot(ENV_TASK_ID)
_SANDBOX_SLOT = EnvSlot(ENV_SANDBOX)


_SLOTS = (_TASK_ID_SLOT, _SANDBOX_SLOT)


def _set_task_environment(task_id: str, options: WorkerOptions) -> None:
    """The task's variables and working directory; call between _enter_task and _leave_task."""
    _TASK_ID_SLOT.set(task_id)
    if ENV_SANDBOX in os.environ:
        del os.environ[ENV_SANDBOX]
    task_dir = _prepare_task_dir(task_id, options)
    if options.run_in_sandbox:
        _SANDBOX_SLOT.set(task_dir)


def _prepare_task_dir(task_id: str, options: WorkerOptions) -> str:
    # Plain strings, not Path objects: this runs for every task.
    run_dir = options.run_dir
    if not os.path.isabs(run_dir):
        raise _TaskFailure(CODE_BAD_TASK, f"run_dir must be an absolute path, got {run_dir}")
    task_dir = os.path.join(run_dir, task_id) if options.run_in_sandbox else run_dir
    try:
        try:
            os.chdir(task_dir)  # usually there already: one system call instead of two
        except FileNotFoundError:
            os.makedirs(task_dir, exist_ok=True)
            os.chdir(task_dir)
    except OSError as e:
        raise _TaskFailure(CODE_BAD_TASK, f"cannot use working directory {task_dir}: {e}") from e
    return task_dir


def _enter_task() -> None:
    global _active_tasks, _saved_cwd, _saved_env
    with _state_lock:
        if _active_tasks == 0:
            try:
                _saved_cwd = os.getcwd()
            except OSError:  # the cwd was deleted; nothing sensible to return to
                _saved_cwd = None
            _saved_env = _env_snapshot()
        _active_tasks += 1


def _leave_task() -> None:
    global _active_tasks
    with _state_lock:
        _active_tasks -= 1
        if _active_tasks == 0:
            _restore_env(_saved_env)
            if _saved_cwd is not None:
                try:
                    os.chdir(_saved_cwd)
                except OSError as e:
                    log.warning("could not return to %s after a task: %s", _saved_cwd, e)


def _env_raw() -> dict[Any, Any]:
    # os.environ keeps its encoded items in `_data`; comparing those dicts is C-speed, while
    # going through the mapping API decodes every item (a large part of a no-op task's cost).
    raw = getattr(os.environ, "_data", None)
    return raw if isinstance(raw, dict) else dict(os.environ)


def _env_snapshot() -> dict[Any, Any]:
    return dict(_env_raw())


def _restore_env(saved: dict[Any, Any]) -> None:
    """Undo whatever the task changed in os.environ, so the next task starts clean."""
    current = _env_raw()
    if current == saved:
        return
    # Usually only this module's per-task variables differ: put those back first, which is
    # far cheaper than comparing every item below.
    for slot in _SLOTS:
        slot.restore(saved)
    if current == saved:
        return
    decode = os.fsdecode if isinstance(next(iter(saved), ""), bytes) else str
    for key in current.keys() - saved.keys():
        del os.environ[decode(key)]
    for key, value in saved.items() - current.items():
        os.environ[decode(key)] = decode(value)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _decode_task(packed_task: bytes) -> Task:
    try:
        msg = unpack(packed_task)
    except ProtocolError as e:
        raise _TaskFailure(CODE_BAD_TASK, f"Could not decode the task message: {e}") from e
    if not isinstance(msg, Task):
        head = bytes(packed_task[:8]).hex()
        raise _TaskFailure(
            CODE_BAD_TASK,
            f"Non Task-type message received: {type(msg).__name__}"
            f" ([{len(packed_task)} bytes] 0x{head}...)",
        )
    return msg


#: One per worker process (shared by the thread engine's threads): functions and arguments
#: that come again are not deserialized again, where that cannot be told apart (see memo).
_MEMO = PayloadMemo()


@functools.lru_cache(maxsize=8)
def _allowlist(allowed: tuple[str, ...]) -> Allowlist:
    return parse_allowlist(allowed)


def _deserialize(
    task_buffer: str, allowed: tuple[str, ...] | None
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    try:
        allow = None if allowed is None else _allowlist(tuple(allowed))
        return unpack_task_buffer(task_buffer, allow, _MEMO.load)
    except ConfigError as e:
        raise _TaskFailure(CODE_BAD_TASK, f"Invalid allowed_serializers: {e}") from e
    except SerializationError as e:
        raise _TaskFailure(CODE_DESERIALIZATION, f"DeserializationError: {e}\n", str(e)) from e


def _task_timeout() -> float | None:
    raw = os.environ.get(ENV_TIMEOUT)
    if raw is None or not raw.strip():
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise _TaskFailure(
            CODE_BAD_TASK, f"{ENV_TIMEOUT}={raw!r} is not a number of seconds"
        ) from None
    return seconds if seconds > 0 else None


# ---------------------------------------------------------------------------------------------
# Calling the function
# ---------------------------------------------------------------------------------------------


def _call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
) -> Any:
    try:
        if timeout is None:
            return fn(*args, **kwargs)
        with _deadline(timeout):
            return fn(*args, **kwargs)
    except TaskTimedOut as e:
        message = f"Task exceeded {ENV_TIMEOUT} of {timeout:g} seconds"
        raise _TaskFailure(CODE_TIMEOUT, _user_traceback(e, message), message) from None
    except BaseException as e:  # SystemExit and KeyboardInterrupt from user code, too
        raise _TaskFailure(CODE_REMOTE, _user_traceback(e), USER_MESSAGE_REMOTE) from None


def _encode_result(value: Any, result_serializers: list[str], limit: int) -> str:
    try:
        payload = _MEMO.dump(value, result_serializers, serialize_result)
    except SerializationError as e:
        raise _TaskFailure(CODE_REMOTE, f"SerializationError: {e}\n", USER_MESSAGE_REMOTE) from e
    if len(payload) > limit:
        message = f"Task result of {len(payload)}B exceeded current limit of {limit}B"
        raise _TaskFailure(
            CODE_RESULT_TOO_BIG, f"MaxResultSizeExceeded: {message}\n", f"remote error: {message}"
        )
    return payload


def _user_traceback(exc: BaseException, message: str | None = None) -> str:
    """The exception's traceback without this module's frames (users see only theirs)."""
    te = traceback.TracebackException.from_exception(exc)
    _drop_own_frames(te, set())
    if message is None:
        return "".join(te.format())
    # Asynchronous timeouts carry no message of their own; state the limit instead.
    lines = ["Traceback (most recent call last):\n", *te.stack.format()] if te.stack else []
    return "".join([*lines, f"{TaskTimedOut.__name__}: {message}\n"])


_OWN_FILE = _user_traceback.__code__.co_filename


def _drop_own_frames(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack = traceback.StackSummary.from_list(
        [frame for frame in te.stack if frame.filename != _OWN_FILE]
    )
    for chained in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if chained is not None:
            _drop_own_frames(chained, seen)


# ---------------------------------------------------------------------------------------------
# Timeouts
# ---------------------------------------------------------------------------------------------


def _deadline(seconds: float) -> AbstractContextManager[None]:
    if _alarm_available():
        return _AlarmDeadline(seconds)
    return _AsyncExcDeadline(seconds)


def _alarm_available() -> bool:
    # SIGALRM only reaches the main thread, and it must not trample a timer someone else
    # (e.g. pytest-timeout) is running; otherwise fall back to the asynchronous exception.
    if threading.current_thread() is not threading.main_thread():
        return False
    if not hasattr(signal, "setitimer"):
        return False
    if signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0):
        return False
    return signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN)


class _AlarmDeadline(AbstractContextManager[None]):
    """SIGALRM-based: interrupts even blocking system calls in the main thread."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._armed = False
        self._previous: Any = signal.SIG_DFL

    def __enter__(self) -> None:
        self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
        self._armed = True
        signal.setitimer(signal.ITIMER_REAL, self._seconds)

    def __exit__(self, *exc_info: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._armed = False
        signal.signal(signal.SIGALRM, self._previous)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._armed:
            raise TaskTimedOut(f"timed out after {self._seconds:g} s")


# Two prototypes of one C function: passing NULL (not None, which ctypes would turn into
# Py_None) withdraws an exception that was set but not yet raised.
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


class _AsyncExcDeadline(AbstractContextManager[None]):
    """Thread-safe fallback: injects TaskTimedOut into the task's thread from a timer."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._lock = threading.Lock()
        self._thread_id = threading.get_ident()
        self._done = False
        self._fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> None:
        self._timer.start()

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True
            if self._fired:
                # The function finished just as time ran out: withdraw the pending
                # exception so it cannot surface later in unrelated code.
                _clear_async_exc(self._thread_id, None)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._fired = True
            _set_async_exc(self._thread_id, TaskTimedOut)
