"""Running the service: uvicorn, and the embedded RabbitMQ when no broker URL is given."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from webservice.app import create_app
from webservice.broker import PrivateRabbit, free_port
from webservice.settings import Settings
from webservice.transport import guarded_protocol, raise_descriptor_limit

log = logging.getLogger(__name__)

PORT_FILE = "amqp_port"


def broker_state_dir(db_path: str) -> Path:
    if db_path == ":memory:":
        return Path(tempfile.mkdtemp(prefix="compute-webservice-rabbit-"))
    return Path(db_path).resolve().parent / "rabbitmq"


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stable_port(state_dir: Path) -> int:
    """The embedded broker keeps its port across restarts.

    Endpoints keep the AMQP URL they were given until they re-register, and the node's name
    (hence its durable queues on disk) contains the port.
    """
    # Private from the first moment: the broker tightens its state dir too, but only later.
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    port_file = state_dir / PORT_FILE
    if port_file.exists():
        port = int(port_file.read_text().strip())
        if port_is_free(port):
            return port
        log.warning("embedded broker port %s is taken; picking another", port)
    port = free_port()
    fd = os.open(port_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{port}\n")
    return port


@contextlib.contextmanager
def embedded_broker(db_path: str) -> Iterator[PrivateRabbit]:
    state_dir = broker_state_dir(db_path)
    broker = PrivateRabbit(state_dir, port=_stable_port(state_dir))
    log.info("no AMQP URL given: starting an embedded RabbitMQ (state in %s)", state_dir)
    try:
        # Inside the try: an interrupted start must still stop the half-started node.
        broker.start()
        log.info("embedded RabbitMQ listening on 127.0.0.1:%s", broker.port)
        yield broker
    finally:
        log.info("stopping the embedded RabbitMQ")
        broker.stop()


def uvicorn_config(
    settings: Settings, host: str, port: int, log_level: str = "info"
) -> uvicorn.Config:
    """The app on uvicorn with the edge limits: header deadline, connection cap, EMFILE pause.

    Every way of serving the app (the command, the in-process test server) should use this.
    """
    return uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        # One line per request is a measurable cost at thousands of tasks per second.
        access_log=False,
        log_config=None,
        http=guarded_protocol(settings.limits),
        loop="webservice.transport:EdgeEventLoop",
        timeout_keep_alive=int(settings.limits.keep_alive_s),
        # The accept loop's length as well: keep a round of accepts short.
        backlog=256,
    )


def run(settings: Settings, host: str, port: int, log_level: str = "info") -> bool:
    """Serve until SIGINT/SIGTERM; False when the app could not start."""
    raise_descriptor_limit()
    server = uvicorn.Server(uvicorn_config(settings, host, port, log_level))
    with _signals_left_to_uvicorn():
        server.run()
    return bool(server.started)


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    pass


@contextlib.contextmanager
def _signals_left_to_uvicorn() -> Iterator[None]:
    """uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal into the
    handlers it found. With the default ones that kills the process on the spot, before the
    embedded broker is stopped; with these no-ops `run` simply returns."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
