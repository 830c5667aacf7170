"""Starting user endpoint processes, as their user, fast.

A manager starts a user endpoint when a submitter's first task is already waiting, so the
start is on that task's latency path. Importing the runtime (pika, pydantic models, engines)
takes a fresh interpreter about half a second; forking a process that has already imported
it takes milliseconds. The manager itself cannot fork safely (its AMQP and helper threads
would be missing in the child, possibly holding locks), so:

* `ForkServer` (the default) execs one helper at manager start, ``python -m
  endpoint.manager.spawner``. It imports everything, stays single-threaded, and forks one child per
  request. The child leaves the helper's session, drops to the target user (initgroups,
  setresgid, setresuid, then checks that root cannot be regained), takes the environment it
  was given and runs `user_endpoint.serve`. The helper reaps its children and reports their
  exits; it signals them on request (it is their parent, so a pid cannot be reused under it).
* `ExecLauncher` runs a fresh ``python -m endpoint.runtime.managed`` per user endpoint, with
  the same user switch done by `subprocess` between fork and exec. Slower, but no helper.

Either way the child's stdin is the manager's control pipe and its status pipe is passed
through: the launch document and credentials go from the manager straight to the child.
Requests and replies between manager and helper are JSON datagrams on a SOCK_SEQPACKET
socket pair; the two pipe ends ride along as SCM_RIGHTS.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import endpoint
from endpoint.errors import SpawnError
from endpoint.manager.identity import LocalUser

log = logging.getLogger(__name__)

#: How long a spawn request waits for the helper (its first one waits for its imports).
SPAWN_TIMEOUT_S = 30.0
#: When its manager goes away, how long the helper lets user endpoints stop before SIGKILL.
CHILD_GRACE_S = 10.0
EXIT_CHILD_FAILED = 70
_MAX_DATAGRAM = 1 << 20

ExitCallback = Callable[[int, int | None], None]


@dataclass(frozen=True)
class SpawnSpec:
    """Where and as whom a user endpoint runs (nothing secret: credentials use the pipe)."""

    user: LocalUser
    env: dict[str, str]
    cwd: str
    title: str

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "user": asdict(self.user)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SpawnSpec:
        u = doc["user"]
        user = LocalUser(
            u["name"], u["uid"], u["gid"], tuple(u["groups"]), u["gecos"], u["shell"], u["home"]
        )
        return cls(user, dict(doc["env"]), str(doc["cwd"]), str(doc["title"]))


class Launcher(Protocol):
    def spawn(self, spec: SpawnSpec, control_fd: int, status_fd: int) -> int: ...
    def signal(self, pid: int, sig: int) -> None: ...
    def close(self) -> None: ...


def drop_privileges(user: LocalUser) -> None:
    """Become `user` for good (in a child, before it runs anything of the user's)."""
    if (os.getuid(), os.getgid()) == (user.uid, user.gid):
        return
    os.initgroups(user.name, user.gid)
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    if user.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise SpawnError("unexpectedly regained root privileges after dropping them")


def _python_env(env: dict[str, str]) -> dict[str, str]:
    # A fresh interpreter must import `endpoint` the way this one did, installed or not.
    root = str(Path(endpoint.__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env = {**env, "PYTHONPATH": os.pathsep.join([root, *paths])}
    return env


# ---- the exec launcher --------------------------------------------------------------------


class ExecLauncher:
    def __init__(self, on_exit: ExitCallback) -> None:
        self._on_exit = on_exit
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def spawn(self, spec: SpawnSpec, control_fd: int, status_fd: int) -> int:
        u = spec.user
        switch = (os.getuid(), os.getgid()) != (u.uid, u.gid)
        cmd = [
            sys.executable,
            "-P",
            "-m",
            "endpoint.runtime.managed",
            "--status-fd",
            str(status_fd),
        ]
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=control_fd,
                pass_fds=(status_fd,),
                env=_python_env(spec.env),
                cwd=spec.cwd if os.path.isdir(spec.cwd) else "/",
                start_new_session=True,
                user=u.uid if switch else None,
                group=u.gid if switch else None,
                extra_groups=list(u.groups) if switch else None,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise SpawnError(f"cannot start a user endpoint process: {e}") from e
        with self._lock:
            self._procs[proc.pid] = proc
        threading.Thread(target=self._wait, args=(proc,), daemon=True).start()
        return proc.pid

    def _wait(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        with self._lock:
            self._procs.pop(proc.pid, None)
        self._on_exit(proc.pid, code)

    def signal(self, pid: int, sig: int) -> None:
        with self._lock:
            proc = self._procs.get(pid)
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)

    def close(self) -> None:
        pass


# ---- the fork server: manager side --------------------------------------------------------


class ForkServer:
    """Client of the helper process; exits arrive through `on_exit` on a reader thread."""

    def __init__(self, on_exit: ExitCallback, title: str = "") -> None:
        self._on_exit = on_exit
        self._title = title
        self._lock = threading.Lock()
        self._replies: dict[int, dict[str, Any]] = {}
        self._replied = threading.Condition(self._lock)
        self._next_id = 0
        self._children: set[int] = set()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._reap()  # a helper that died: restarted here, it must not stay a zombie
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [sys.executable, "-P", "-m", "endpoint.manager.spawner", "--fd", str(theirs.fileno())]
        if self._title:
            cmd += ["--title", self._title]
        try:
            self._proc = subprocess.Popen(
                cmd,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=_python_env(dict(os.environ)),
            )
        except OSError as e:
            ours.close()
            raise SpawnError(f"cannot start the user endpoint spawner: {e}") from e
        finally:
            theirs.close()
        self._sock = ours
        threading.Thread(target=self._read, args=(ours,), name="spawner", daemon=True).start()
        log.info("user endpoint spawner started (pid %s)", self._proc.pid)

    @property
    def alive(self) -> bool:
        return self._sock is not None

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except OSError:
                data = b""
            if not data:
                break
            self._dispatch(json.loads(data))
        self._lost(sock)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg.get("op") == "exited":
            with self._lock:
                self._children.discard(msg["pid"])
            self._on_exit(int(msg["pid"]), msg.get("status"))
            return
        with self._lock:
            if "pid" in msg:  # here, not in `_ask`: its exit may be the very next message
                self._children.add(int(msg["pid"]))
            self._replies[int(msg["id"])] = msg
            self._replied.notify_all()

    def _lost(self, sock: socket.socket) -> None:
        with self._lock:
            if self._sock is sock:
                self._sock = None
            orphans = sorted(self._children)
            self._children.clear()
            self._replied.notify_all()
        sock.close()  # the helper's end is gone; a second close (from close()) is harmless
        if orphans:
            log.error("the user endpoint spawner exited; its user endpoints %s are lost", orphans)
        for pid in orphans:
            self._on_exit(pid, None)

    def spawn(self, spec: SpawnSpec, control_fd: int, status_fd: int) -> int:
        if not self.alive:
            log.warning("the user endpoint spawner is gone; starting a new one")
            self.start()
        with self._lock:
            self._next_id += 1
            rid = self._next_id
        request = json.dumps({"op": "spawn", "id": rid, "spec": spec.to_json()}).encode()
        reply = self._ask(rid, request, [control_fd, status_fd])
        if "pid" not in reply:
            raise SpawnError(str(reply.get("error", "the spawner did not start it")))
        return int(reply["pid"])

    def _ask(self, rid: int, request: bytes, fds: list[int]) -> dict[str, Any]:
        sock = self._sock
        if sock is None:
            raise SpawnError("the user endpoint spawner is not running")
        try:
            socket.send_fds(sock, [request], fds)
        except OSError as e:
            raise SpawnError(f"cannot reach the user endpoint spawner: {e}") from e
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        with self._lock:
            while rid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._sock is None:
                    raise SpawnError("the user endpoint spawner did not answer")
                self._replied.wait(left)
            return self._replies.pop(rid)

    def signal(self, pid: int, sig: int) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.send(json.dumps({"op": "signal", "pid": pid, "sig": int(sig)}).encode())

    def close(self) -> None:
        """Stop the helper (it ends any user endpoint still running) and wait for it."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._reap()

    def _reap(self) -> None:
        """Wait for the helper, whose socket is closed: it ends its user endpoints, then exits."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(CHILD_GRACE_S + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the fork server: the helper process --------------------------------------------------


def _interpreter_readable() -> bool:
    """Whether this user can still import from the interpreter's library (modules that code
    imports later, lazily). Not so when Python lives in a private directory such as root's
    home; a fresh interpreter then finds a library of its own, so the child execs one."""
    libdir = os.path.dirname(os.__file__)
    return os.access(libdir, os.R_OK | os.X_OK)


def _exec_user_endpoint(status_fd: int) -> None:
    argv = [sys.executable, "-P", "-m", "endpoint.runtime.managed", "--status-fd", str(status_fd)]
    os.set_inheritable(status_fd, True)
    os.execve(sys.executable, argv, _python_env(dict(os.environ)))


def _warm() -> None:
    """Import what a user endpoint needs, once, so that every fork starts with it."""
    import encodings.idna  # noqa: F401  (pika resolves host names with it)
    import runpy  # noqa: F401  (task execution)
    import sqlite3  # noqa: F401  (the journal)

    import pika.adapters.select_connection  # noqa: F401

    import endpoint.engines.process
    import endpoint.engines.thread
    import endpoint.runtime.managed  # noqa: F401  (runtime, config, engines, amqp)

    with contextlib.suppress(ImportError):
        import setproctitle  # noqa: F401


class _Helper:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sel = selectors.DefaultSelector()
        self.children: dict[int, int | None] = {}  # pid -> its pidfd (None: polled)
        self.sel.register(sock, selectors.EVENT_READ, "sock")

    def serve(self) -> None:
        while True:
            for key, _ in self.sel.select(timeout=1.0):
                if key.data == "sock" and not self._request():
                    self._shutdown()
                    return
            self._reap()

    def _request(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, _MAX_DATAGRAM, 2)
        except OSError:
            return False
        if not data:
            return False
        try:
            msg = json.loads(data)
            if msg.get("op") == "spawn":
                self._spawn(msg, fds)
            elif msg.get("op") == "signal" and msg.get("pid") in self.children:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(msg["pid"]), int(msg["sig"]))
        except (ValueError, KeyError, TypeError, OSError) as e:
            # One bad request (or a failed fork) must not strand every user endpoint.
            log.error("spawner: request failed: %r", e)
            with contextlib.suppress(Exception):
                self._reply({"id": json.loads(data)["id"], "error": f"cannot start: {e}"})
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return True

    def _reply(self, msg: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(json.dumps(msg).encode())

    def _spawn(self, msg: dict[str, Any], fds: list[int]) -> None:
        if len(fds) != 2:
            self._reply({"id": msg["id"], "error": "a spawn request needs two pipe ends"})
            return
        spec = SpawnSpec.from_json(msg["spec"])
        pid = os.fork()
        if pid == 0:
            self._become(spec, fds[0], fds[1])
        pidfd = None
        with contextlib.suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(pid)
            self.sel.register(pidfd, selectors.EVENT_READ, "child")
        self.children[pid] = pidfd
        self._reply({"id": msg["id"], "pid": pid})

    def _become(self, spec: SpawnSpec, control_fd: int, status_fd: int) -> None:
        """The forked child: never returns."""
        code = EXIT_CHILD_FAILED
        try:
            self._close_inherited()
            os.setsid()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            os.dup2(control_fd, 0)
            os.close(control_fd)
            drop_privileges(spec.user)
            os.environ.clear()
            os.environ.update(spec.env)
            os.umask(0o077)
            os.chdir(spec.cwd if os.path.isdir(spec.cwd) else "/")
            if not _interpreter_readable() and os.access(sys.executable, os.X_OK):
                _exec_user_endpoint(status_fd)
            # Neither: carry on with what this process imported already (`_warm`).
            from endpoint.runtime.managed import serve

            code = serve(0, status_fd)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.write(status_fd, (json.dumps({"error": f"cannot start: {e}"}) + "\n").encode())
        finally:
            logging.shutdown()
            os._exit(code)

    def _close_inherited(self) -> None:
        for pidfd in self.children.values():
            if pidfd is not None:
                with contextlib.suppress(OSError):
                    os.close(pidfd)
        self.sel.close()
        self.sock.close()

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            pidfd = self.children.pop(pid)
            if pidfd is not None:
                self.sel.unregister(pidfd)
                os.close(pidfd)
            self._reply({"op": "exited", "pid": pid, "status": os.waitstatus_to_exitcode(status)})

    def _shutdown(self) -> None:
        """The manager is gone: stop every user endpoint (they also see their pipe close)."""
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + CHILD_GRACE_S
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    # Ctrl-C reaches the whole foreground group: shutting down is the manager's decision.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    fd = int(argv[argv.index("--fd") + 1])
    sock = socket.socket(fileno=fd)
    _warm()
    if "--title" in argv:
        from endpoint.host.proctitle import set_title

        set_title(argv[argv.index("--title") + 1])
    _Helper(sock).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
