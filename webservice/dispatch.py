"""Submission: from a `POST /v3/endpoints/{id}/submit` body to task messages on the broker.

A single-user endpoint (ours, registered with `metadata.endpoint_mode == "single_user"`)
consumes `<endpoint>.tasks` itself. Any other endpoint is a manager: the tasks go to the queue of
the submitter's user endpoint, after a `cmd_start_endpoint` that makes the manager start it.

The tasks are stored before they are published, so a result can never arrive for a task the
service does not know; every publish of a batch is in flight at once and the reply waits for
the broker's confirms, so an answered submit is a durable one.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pika

from endpoint.protocol.messages import Task, pack
from webservice.amqp import AmqpLink
from webservice.commands import (
    command_properties,
    encode_command,
    start_command,
    uep_id,
    uep_name,
)
from webservice.errors import (
    BrokerUnavailable,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    Unroutable,
)
from webservice.limits import (
    MAX_HEADER_BYTES,
    MAX_RESOURCE_SPEC_BYTES,
    MAX_RESULT_SERIALIZERS_BYTES,
    MAX_USER_CONFIG_BYTES,
)
from webservice.liveness import is_online
from webservice.models import SubmitIn, canonical_uuid
from webservice.policy_check import check_policy
from webservice.principals import Principals
from webservice.security import Caller
from webservice.settings import Settings
from webservice.store import Store
from webservice.store.credentials import identity_username
from webservice.store.endpoints import Endpoint, UserEndpoint
from webservice.store.functions import Function
from webservice.store.tasks import NewTask, TaskGroup
from webservice.topology import TASKS_EXCHANGE, Topology

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        link: AmqpLink,
        topology: Topology,
        principals: Principals,
    ):
        self._settings = settings
        self._store = store
        self._link = link
        self._topology = topology
        self._names = topology.names
        self._principals = principals
        # When each UEP's start command was last sent (monotonic), to pace revivals.
        self._started_at: dict[str, float] = {}

    async def submit(
        self, caller: Caller, endpoint_id: str, body: SubmitIn, received_ns: int
    ) -> dict[str, Any]:
        """All or nothing: checked and encoded before the first side effect, and a failure
        after that discards what it stored (the client never learns those task ids)."""
        endpoint = self._endpoint_for_submit(caller, endpoint_id)
        functions = self._functions_for_submit(caller, endpoint, body.tasks)
        check_submission(body, functions, self._settings.limits.max_submission_bytes)
        route_id = endpoint.endpoint_id
        if endpoint.is_manager:
            route_id = uep_id(endpoint.endpoint_id, caller.identity, body.user_endpoint_config)
        elif body.user_endpoint_config:
            # A warning, not a refusal: the SDK's Executor sends the same options with every
            # batch, and a script written for a core endpoint is often pointed at a personal
            # one; the tasks are valid there, only the options cannot apply.
            log.warning(
                "endpoint %s is a single-user endpoint: the submission's user_endpoint_config"
                " (keys %s) is ignored; it applies only to core (multi-user) endpoints",
                endpoint.endpoint_id,
                sorted(body.user_endpoint_config)[:20],
            )
        group_id, group = self._task_group(caller, body.task_group_id)
        new_tasks, ids_by_key = self._new_tasks(
            caller, endpoint.endpoint_id, route_id, group_id, body, functions, received_ns
        )
        messages = encode_tasks(new_tasks, body, functions)
        created = group is None
        if group is None:
            group = self._store.tasks.create_group(group_id, caller.identity, time.time())
        stored = False
        try:
            if body.create_queue:
                await self._ensure_result_queue(group)
            if endpoint.is_manager:
                await self._user_endpoint(caller, endpoint, body)
            else:
                await self._topology.ensure_tasks_queue(route_id)
            self._store.tasks.add(new_tasks)
            stored = True
            await self._publish_routed(
                TASKS_EXCHANGE,
                self._names.tasks_queue(route_id),
                messages,
                functools.partial(self._topology.ensure_tasks_queue, route_id),
            )
        except BaseException:
            # The caller never learns these ids: forget them (the SDK resubmits on a 5xx).
            if stored:
                self._store.tasks.discard([t.task_id for t in new_tasks])
            if created:
                self._store.tasks.discard_group_if_empty(group.task_group_id)
            raise
        return {
            "request_id": str(uuid.uuid4()),
            "task_group_id": group.task_group_id,
            "endpoint_id": endpoint.endpoint_id,
            "tasks": ids_by_key,
        }

    # --- checks ---------------------------------------------------------------------------

    def _endpoint_for_submit(self, caller: Caller, endpoint_id: str) -> Endpoint:
        endpoint = self._store.endpoints.get(endpoint_id)
        if endpoint is None:
            raise NotFound(f"endpoint {endpoint_id} not found")
        if endpoint.owner != caller.identity and not endpoint.public:
            raise Forbidden(f"endpoint {endpoint_id} is not yours and not public")
        check_policy(self._store, caller, endpoint)
        return endpoint

    def _functions_for_submit(
        self, caller: Caller, endpoint: Endpoint, tasks: dict[str, list[str]]
    ) -> dict[str, Function]:
        """Function per submitted key; each must exist, be visible and be allowed."""
        wanted = {key: canonical_uuid(key) for key in tasks}
        found = self._store.functions.get_many(set(wanted.values()))
        allowed = set(endpoint.allowed_functions)
        functions = {}
        for key, fid in wanted.items():
            fn = found.get(fid)
            if fn is None:
                raise NotFound(f"function {fid} not found")
            if not fn.visible_to(caller.identity):
                raise Forbidden(f"function {fid} is not yours and not public")
            if allowed and fid not in allowed:
                raise Forbidden(
                    f"function {fid} is not in the allowed_functions of endpoint "
                    f"{endpoint.endpoint_id}"
                )
            functions[key] = fn
        return functions

    def _task_group(
        self, caller: Caller, task_group_id: str | None
    ) -> tuple[str, TaskGroup | None]:
        """The group's id, and the group when it exists already (else it is made later)."""
        tg = task_group_id or str(uuid.uuid4())
        group = self._store.tasks.get_group(tg)
        if group is not None and group.owner != caller.identity:
            raise Forbidden(f"task group {tg} belongs to another identity")
        return tg, group

    # --- broker ---------------------------------------------------------------------------

    async def _ensure_result_queue(self, group: TaskGroup) -> None:
        queue = self._names.result_queue(group.owner, group.task_group_id)
        # Declared before the reply: the SDK's result watcher consumes it without declaring.
        await self._topology.ensure_queue(queue)
        if group.queue_name != queue:
            self._store.tasks.set_group_queue(group.task_group_id, queue)

    async def _user_endpoint(self, caller: Caller, manager: Endpoint, body: SubmitIn) -> None:
        """The caller's UEP on `manager`: its queue declared and its start command sent."""
        uid = uep_id(manager.endpoint_id, caller.identity, body.user_endpoint_config)
        uep = UserEndpoint(
            uep_id=uid,
            manager_id=manager.endpoint_id,
            owner=caller.identity,
            name=uep_name(manager.endpoint_id, uid),
            user_opts=body.user_endpoint_config or {},
            user_runtime=body.user_runtime or {},
        )
        self._store.endpoints.save_uep(uep)
        # The queue must exist before the UEP starts: a missing one silently starves it.
        await self._topology.ensure_tasks_queue(uid)
        await self._send_start(uep, rotate=not self._running(uep.uep_id))

    def _running(self, uep_id: str) -> bool:
        """Heartbeating, or told to start so recently that it may still be starting."""
        hb = self._store.heartbeats.get(uep_id)
        if is_online(hb, time.time(), self._settings.default_heartbeat_period_s):
            return True
        since = time.monotonic() - self._started_at.get(uep_id, -1e9)
        return since < self._settings.uep_restart_grace_s

    async def _send_start(self, uep: UserEndpoint, rotate: bool) -> None:
        """A start command with the UEP's own broker account: a new password when it starts
        now (`rotate`), the current one when the command only refreshes a running UEP (a new
        password then would race the reconnects of the UEP that holds the old one)."""
        commands = self._names.commands_queue(uep.manager_id)
        await self._topology.ensure_queue(commands)
        url = await self._principals.endpoint_url(uep.uep_id, rotate=rotate)
        if rotate:
            self._started_at[uep.uep_id] = time.monotonic()
        command = start_command(uep, identity_username(uep.owner), self._names, url)
        await self._publish_routed(
            "",
            commands,
            [(encode_command(command), command_properties())],
            functools.partial(self._topology.ensure_queue, commands),
        )

    async def _publish_routed(
        self,
        exchange: str,
        queue: str,
        messages: list[tuple[bytes, pika.BasicProperties]],
        redeclare: Callable[[], Awaitable[None]],
    ) -> None:
        """Publish as mandatory and wait for every confirm. Messages the broker returns (their
        queue was deleted behind our back) are sent again once after `redeclare`; returned a
        second time, the submit fails (503) instead of answering 200 for lost tasks."""
        returned = await self._unroutable(
            [self._link.publish(exchange, queue, d, p, mandatory=True) for d, p in messages]
        )
        if not returned:
            return
        log.warning(
            "queue %s was gone (%d message(s) returned); declaring it again", queue, len(returned)
        )
        self._topology.forget(queue)
        await redeclare()
        again = await self._unroutable(
            [self._link.publish(exchange, queue, *messages[i], mandatory=True) for i in returned]
        )
        if again:
            # The routed ones were queued; the caller discards every task of the submit.
            raise BrokerUnavailable(f"queue {queue} could not be declared again; submit again")

    async def _unroutable(self, futures: list[asyncio.Future[None]]) -> list[int]:
        """Wait for every confirm; the indices of the returned ones (other failures raise)."""
        try:
            outcomes = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), self._settings.confirm_timeout_s
            )
        except TimeoutError as e:
            raise BrokerUnavailable("the broker did not confirm the messages in time") from e
        returned = []
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Unroutable):
                returned.append(i)
            elif isinstance(outcome, BaseException):
                raise outcome
        return returned

    def _new_tasks(
        self,
        caller: Caller,
        endpoint_id: str,
        route_id: str,
        group_id: str,
        body: SubmitIn,
        functions: dict[str, Function],
        received_ns: int,
    ) -> tuple[list[NewTask], dict[str, list[str]]]:
        new_tasks: list[NewTask] = []
        ids_by_key: dict[str, list[str]] = {}
        for key, payloads in body.tasks.items():
            fid = functions[key].function_id
            ids = [str(uuid.uuid4()) for _ in payloads]
            ids_by_key[key] = ids
            new_tasks.extend(
                NewTask(
                    tid,
                    group_id,
                    fid,
                    endpoint_id,
                    route_id,
                    caller.identity,
                    received_ns,
                )
                for tid in ids
            )
        return new_tasks, ids_by_key

    # --- manager heartbeats ---------------------------------------------------------------

    async def revive_user_endpoints(self, manager_id: str) -> None:
        """Re-send start commands for offline UEPs that still have tasks waiting.

        A UEP stops when idle, when its manager restarts, or its command may have expired
        while the manager was away; tasks queued for it would wait forever without this.
        """
        for uep in self._store.endpoints.ueps_with_pending_tasks(manager_id):
            if self._running(uep.uep_id):
                continue
            log.info("re-sending the start command of user endpoint %s", uep.uep_id)
            try:
                await self._send_start(uep, rotate=True)
            except BrokerUnavailable as e:
                log.warning("could not re-send a start command: %s", e)


def check_submission(body: SubmitIn, functions: dict[str, Function], limit: int) -> None:
    """413 for a submission or a header-borne field over its limit (nothing is encoded yet).

    Every task carries its function's code, so the size is code + payload per task, in bytes
    as they will be published (UTF-8).
    """
    size = sum(
        _utf8_len(functions[key].code) * len(payloads) + sum(map(_utf8_len, payloads))
        for key, payloads in body.tasks.items()
    )
    if size > limit:
        raise PayloadTooLarge(
            f"the submission's function code and payloads ({size} bytes) exceed the limit of"
            f" {limit} bytes per submission; pass large data by reference (a file or URL) or"
            " submit fewer tasks at once",
            code="TASK_PAYLOAD_TOO_LARGE",
        )
    _check_field("resource_specification", body.resource_specification, MAX_RESOURCE_SPEC_BYTES)
    _check_field("result_serializers", body.result_serializers, MAX_RESULT_SERIALIZERS_BYTES)
    _check_field("user_endpoint_config", body.user_endpoint_config, MAX_USER_CONFIG_BYTES)
    _check_field("user_runtime", body.user_runtime, MAX_USER_CONFIG_BYTES)


def _utf8_len(text: str) -> int:
    # isascii() is O(1) in CPython: SDK payloads (base64) never pay for an encoded copy.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _check_field(name: str, value: Any, limit: int) -> None:
    size = len(json.dumps(value).encode()) if value is not None else 0
    if size > limit:
        raise PayloadTooLarge(
            f"{name} is {size} bytes as JSON; at most {limit} are accepted",
            code="FIELD_TOO_LARGE",
        )


def encode_tasks(
    new_tasks: list[NewTask], body: SubmitIn, functions: dict[str, Function]
) -> list[tuple[bytes, pika.BasicProperties]]:
    """Every task message of a submission, fully encoded (422 when one cannot be)."""
    code = {fn.function_id: fn.code for fn in functions.values()}
    payloads = [p for plist in body.tasks.values() for p in plist]
    spec = (
        "null" if body.resource_specification is None else json.dumps(body.resource_specification)
    )
    serializers = body.result_serializers or []
    messages = []
    header_bytes = 0
    try:
        for task, payload in zip(new_tasks, payloads, strict=True):
            message = Task(task_id=task.task_id, task_buffer=code[task.function_id] + payload)
            props = pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                # Mandatory publishes are matched to the broker's returns by this id.
                message_id=task.task_id,
                headers={
                    "function_uuid": task.function_id,
                    "task_uuid": task.task_id,
                    "resource_specification": spec,
                    "result_serializers": serializers,
                },
            )
            messages.append((pack(message), props))
        if messages:
            # The headers are the same size for every task: one must fit in a frame.
            header_bytes = sum(map(len, messages[0][1].encode()))
    except (UnicodeError, ValueError, TypeError) as e:
        raise Unprocessable(f"a task cannot be encoded: {e}") from None
    if header_bytes > MAX_HEADER_BYTES:
        raise PayloadTooLarge(
            f"the task headers would be {header_bytes} bytes; at most {MAX_HEADER_BYTES}",
            code="FIELD_TOO_LARGE",
        )
    return messages
