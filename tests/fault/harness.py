"""Jepsen-style fault harness: submit known task ids, inject a fault, count what comes back.

Everything is real: a private RabbitMQ, our web service, our endpoint started by its CLI, real
worker processes. Tasks are submitted over the service's REST API exactly as the official SDK
does (function registered once, then batches of argument payloads), and results are read from
the task group's queue, where the service forwards each stored result once. The checker then
counts, per run, results that never came (lost), came twice (duplicated) or were never asked
for (unexpected).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pika

from devstack.stack import Stack
from endpoint.protocol.messages import Result, unpack_as
from endpoint.protocol.serialize import deserialize, pack_buffers, serialize
from tests.fault.proxy import BrokerProxy
from webservice.broker import free_port

# Tasks are defined in a `__main__` namespace so dill ships them by value: the workers cannot
# import this test module (they run with `python -P`).
_SOURCE = """
def work(i, secs):
    import time
    time.sleep(secs)
    return i

def poison(i):
    import os
    os._exit(3)

def padded(i, secs, pad):
    import time
    time.sleep(secs)
    return i
"""


def _functions() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(_SOURCE, "<fault-tasks>", "exec"), namespace)
    return namespace


FUNCTIONS = _functions()
CONSUMER_TIMEOUT_MS = 10_000


@dataclass
class Outcome:
    """What came back for one run.

    A second result for a task is either a *duplicate*: a different Result (another execution,
    another answer; its worker timestamps differ), which breaks exactly-once; or a
    *redelivered* copy: the very same Result delivered twice. The second happens when the broker
    stops after it stored a result the web service forwarded but before it confirmed it: the
    service cannot know the copy landed and forwards it again (no queue can tell, the two
    generals' problem). The SDK matches results to futures by task id and keeps the first, so
    its user still sees one result; the count is printed so that it stays visible.
    """

    submitted: set[str]
    results: list[Result] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(r.task_id for r in self.results)

    @property
    def lost(self) -> int:
        return len(self.submitted - set(self.counts))

    def _extras(self) -> tuple[int, int]:
        first: dict[str, Result] = {}
        duplicated = redelivered = 0
        for r in self.results:
            if r.task_id not in first:
                first[r.task_id] = r
            elif r == first[r.task_id]:
                redelivered += 1
            else:
                duplicated += 1
        return duplicated, redelivered

    @property
    def duplicated(self) -> int:
        return self._extras()[0]

    @property
    def redelivered(self) -> int:
        return self._extras()[1]

    @property
    def unexpected(self) -> int:
        return len(set(self.counts) - self.submitted)

    def failures(self) -> list[Result]:
        return [r for r in self.results if r.is_error]

    def line(self, case: str) -> str:
        return (
            f"{case} submitted={len(self.submitted)} results={len(self.results)} "
            f"lost={self.lost} duplicated={self.duplicated} unexpected={self.unexpected} "
            f"redelivered={self.redelivered}"
        )


#: Every count line printed in this session, for the summary at the end of the run (conftest).
COUNT_LINES: list[str] = []


def report(case: str, outcome: Outcome) -> str:
    """Print a case's count line and keep it for the end-of-run summary."""
    line = outcome.line(case)
    print(line)
    COUNT_LINES.append(line)
    return line


class FaultStack(Stack):
    """A stack on a free port, with task submission and result collection for the checker.

    With `proxied`, endpoints reach the broker only through a loopback `BrokerProxy` (the web
    service hands them its URL) while the web service and the checker talk to the broker
    directly: the proxy's faults cut the endpoint's network alone.
    """

    def __init__(
        self,
        consumer_timeout_ms: int = CONSUMER_TIMEOUT_MS,
        proxied: bool = False,
        port: int | None = None,
    ) -> None:
        # A free port, unless the official tools join: their "local" environment is port 5000.
        super().__init__(port=port or free_port())
        self.proxy = BrokerProxy(self.rabbit.port) if proxied else None
        # Case 7: a broker that drops consumers holding an unacked delivery for more than ten
        # seconds. Every case runs under it, so none may rely on holding deliveries.
        conf = self.rabbit.state_dir / "rabbitmq.conf"
        conf.write_text(
            re.sub(
                r"consumer_timeout = \d+",
                f"consumer_timeout = {consumer_timeout_ms}",
                conf.read_text(),
            )
        )
        self._prefix = ""
        self._functions: dict[str, str] = {}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        if name == "webservice" and self.proxy is not None:
            argv = [*argv, "--public-amqp-url", self.proxy.url_for(self.rabbit.url)]
        super()._spawn(name, argv, env)

    def close(self) -> None:
        try:
            super().close()  # endpoints stop first, through the proxy
        finally:
            if self.proxy is not None:
                self.proxy.close()

    def function_id(self, name: str) -> str:
        if name not in self._functions:
            code = pack_buffers([serialize(FUNCTIONS[name])])
            reply = self.api(
                "POST",
                "/v3/functions",
                {"function_name": name, "function_code": code, "serialized": True},
            )
            self._functions[name] = reply["function_uuid"]
        return self._functions[name]

    def submit(
        self, endpoint_id: str, name: str, args_list: list[tuple[Any, ...]], group: str | None
    ) -> tuple[list[str], str]:
        """Submit one batch; return its task ids and task group id."""
        fid = self.function_id(name)
        payloads = [pack_buffers([serialize(args), serialize({})]) for args in args_list]
        body: dict[str, Any] = {"tasks": {fid: payloads}, "create_queue": True}
        if group:
            body["task_group_id"] = group
        reply = self.api("POST", f"/v3/endpoints/{endpoint_id}/submit", body)
        return list(reply["tasks"][fid]), str(reply["task_group_id"])

    def queue_prefix(self) -> str:
        """This client's result-queue prefix: the service's plus a token only it knows."""
        if not self._prefix:
            self._prefix = str(
                self.api("GET", "/v2/get_amqp_result_connection_url")["queue_prefix"]
            )
        return self._prefix

    def collect(self, group: str, expected: int, timeout: float) -> list[Result]:
        """Drain the task group's result queue until `expected` results or the timeout.

        After the expected count arrives it keeps listening a little longer, so a late
        duplicate is still seen.
        """
        queue = f"{self.queue_prefix()}{group}"
        results: list[Result] = []
        deadline = time.monotonic() + timeout
        grace_until: float | None = None
        while time.monotonic() < (grace_until or deadline):
            got = self._get_batch(queue)
            results += got
            if grace_until is None and len(results) >= expected:
                grace_until = time.monotonic() + 2.0
            if not got:
                time.sleep(0.1)
        return results

    def _get_batch(self, queue: str) -> list[Result]:
        out: list[Result] = []
        try:
            conn = pika.BlockingConnection(pika.URLParameters(self.rabbit.url))
        except pika.exceptions.AMQPConnectionError:
            return out  # the broker is down in this phase of the fault
        try:
            ch = conn.channel()
            while len(out) < 1000:
                method, _props, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                out.append(unpack_as(body, Result))
        except pika.exceptions.ChannelClosedByBroker:
            pass  # the queue is declared at submit time; not there yet
        finally:
            if conn.is_open:
                conn.close()
        return out


@contextmanager
def configured_stack(name: str, config: str, *, proxied: bool = False) -> Iterator[FaultStack]:
    """A running service (and broker) with endpoint `name` configured, closed afterwards."""
    s = FaultStack(proxied=proxied)
    try:
        s.start_service()
        s.configure_endpoint(name, config)
        yield s
    finally:
        s.close()


def values(results: list[Result]) -> dict[str, Any]:
    return {r.task_id: deserialize(r.data) for r in results if not r.is_error}


def seeds(n: int) -> list[int]:
    """Seeds for the runs of a case; FAULT_SEED pins one for a reproduction."""
    import os

    pinned = os.environ.get("FAULT_SEED")
    return [int(pinned)] if pinned else [random.randrange(1 << 30) for _ in range(n)]
