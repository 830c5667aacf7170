"""The interchange state machine: what it journals, acks, runs and publishes for each event."""

from __future__ import annotations

import json
import uuid

from endpoint.protocol.messages import Result, unpack
from endpoint.runtime.interchange import Delivery, Interchange, RecentIds
from endpoint.runtime.journal import JournaledTask

EP = str(uuid.uuid4())


def delivery(
    tag: int, *, gen: int = 1, task_id: str | None = None, fid: str | None = None, **headers: object
) -> Delivery:
    h: dict[str, object] = {
        "task_uuid": task_id or str(uuid.uuid4()),
        "function_uuid": fid or str(uuid.uuid4()),
        "resource_specification": "null",
        "result_serializers": [],
    }
    h.update(headers)
    return Delivery(gen, tag, {k: v for k, v in h.items() if v is not None}, b"body")


def connected(window: int = 2, **kw: object) -> Interchange:
    ix = Interchange(EP, window=window, **kw)  # type: ignore[arg-type]
    ix.on_connected()
    return ix


def test_delivery_is_journaled_acked_and_run_within_the_window() -> None:
    ix = connected(window=2)
    ds = [delivery(t) for t in (1, 2, 3)]
    plan = ix.on_deliveries(ds)
    assert [t.task_id for t in plan.add_tasks] == [d.headers["task_uuid"] for d in ds]
    assert plan.acks == [(1, 1), (1, 2), (1, 3)]
    assert [s.task_id for s in plan.submit] == [
        ds[0].headers["task_uuid"],
        ds[1].headers["task_uuid"],
    ]
    assert plan.started == [s.task_id for s in plan.submit]
    assert len(ix.pending) == 1


def test_result_is_journaled_published_and_frees_a_slot() -> None:
    ix = connected(window=1)
    d1, d2 = delivery(1), delivery(2)
    ix.on_deliveries([d1, d2])
    tid = str(d1.headers["task_uuid"])
    plan = ix.on_results([(tid, b"packed")])
    assert plan.results == [(tid, b"packed")]
    assert plan.publish == [(tid, b"packed")]
    assert [s.task_id for s in plan.submit] == [d2.headers["task_uuid"]]
    assert plan.forget == []
    confirm = ix.on_confirms([tid], True)
    assert confirm.forget == [tid]
    assert tid not in ix.tasks


def test_a_second_result_for_the_same_task_is_ignored() -> None:
    ix = connected()
    d = delivery(1)
    ix.on_deliveries([d])
    tid = str(d.headers["task_uuid"])
    assert ix.on_results([(tid, b"a")]).publish
    assert not ix.on_results([(tid, b"b")]).publish


def test_missing_headers_are_rejected_not_acked() -> None:
    ix = connected()
    plan = ix.on_deliveries([delivery(7, task_uuid=None)])
    assert plan.rejects == [(1, 7)]
    assert plan.acks == [] and plan.add_tasks == []


def test_redelivered_task_is_acked_but_not_run_twice() -> None:
    ix = connected()
    d = delivery(1)
    ix.on_deliveries([d])
    again = Delivery(2, 1, d.headers, d.body)
    plan = ix.on_deliveries([again])
    assert plan.acks == [(2, 1)]
    assert plan.submit == [] and plan.add_tasks == []


def test_redelivery_after_confirmation_is_not_rerun() -> None:
    ix = connected()
    d = delivery(1)
    tid = str(d.headers["task_uuid"])
    ix.on_deliveries([d])
    ix.on_results([(tid, b"r")])
    ix.on_confirms([tid], True)
    plan = ix.on_deliveries([Delivery(2, 5, d.headers, d.body)])
    assert plan.submit == [] and plan.acks == [(2, 5)]


def test_recent_ids_keep_between_keep_and_twice_keep_of_the_latest() -> None:
    recent = RecentIds(keep=3)
    ids = [str(uuid.uuid4()) for _ in range(7)]
    for tid in ids:
        recent.add(tid)
    # Generations of 3: {0,1,2} was dropped when {3,4,5} filled up and 6 started a new one.
    assert [tid in recent for tid in ids] == [False] * 3 + [True] * 4
    assert len(recent) == 4
    recent.add("not-a-uuid")
    assert "not-a-uuid" in recent and ids[6].upper() in recent  # one UUID, any spelling
    assert 42 not in recent


def test_a_redelivery_within_the_remembered_window_is_not_rerun() -> None:
    ix = connected(remember_done=2)
    first = delivery(1)
    ix.on_deliveries([first])
    tid = str(first.headers["task_uuid"])
    ix.on_results([(tid, b"r")])
    ix.on_confirms([tid], True)
    for tag in range(2, 4):  # two more finish: the first is still within keep..2*keep
        d = delivery(tag)
        other = str(d.headers["task_uuid"])
        ix.on_deliveries([d])
        ix.on_results([(other, b"r")])
        ix.on_confirms([other], True)
    plan = ix.on_deliveries([Delivery(2, 9, first.headers, first.body)])
    assert plan.submit == [] and plan.add_tasks == []


def test_disallowed_function_gets_a_failure_result_without_running() -> None:
    allowed = str(uuid.uuid4())
    ix = connected(allowed_functions={allowed})
    d = delivery(1)
    plan = ix.on_deliveries([d])
    assert plan.submit == []
    ((tid, packed),) = plan.publish
    msg = unpack(packed)
    assert isinstance(msg, Result) and msg.error_details is not None
    assert msg.error_details["code"] == "FUNCTION_NOT_ALLOWED"
    assert tid == d.headers["task_uuid"]


def test_bad_resource_specification_gets_a_clear_failure() -> None:
    ix = connected()
    plan = ix.on_deliveries([delivery(1, resource_specification="{not json")])
    ((_, packed),) = plan.publish
    msg = unpack(packed)
    assert isinstance(msg, Result)
    assert "resource_specification" in msg.data


def test_resource_specification_reaches_the_engine() -> None:
    ix = connected()
    plan = ix.on_deliveries([delivery(1, resource_specification=json.dumps({"num_nodes": 2}))])
    assert plan.submit[0].resource_specification == {"num_nodes": 2}


def test_results_wait_while_disconnected_and_are_sent_on_reconnect() -> None:
    ix = Interchange(EP, window=2)
    d = delivery(1)
    tid = str(d.headers["task_uuid"])
    ix.on_deliveries([d])
    plan = ix.on_results([(tid, b"r")])
    assert plan.results == [(tid, b"r")] and plan.publish == []
    assert ix.on_connected().publish == [(tid, b"r")]


def test_nacked_or_lost_results_are_republished() -> None:
    ix = connected()
    d = delivery(1)
    tid = str(d.headers["task_uuid"])
    ix.on_deliveries([d])
    ix.on_results([(tid, b"r")])
    assert ix.on_confirms([tid], False).forget == []
    assert ix.republish().publish == [(tid, b"r")]
    ix.on_disconnected()
    assert ix.republish().publish == []
    assert ix.on_connected().publish == [(tid, b"r")]


def test_recovery_resends_results_runs_unstarted_and_fails_interrupted() -> None:
    done = JournaledTask(str(uuid.uuid4()), "f", b"b", [], None, attempts=1, result=b"res")
    fresh = JournaledTask(str(uuid.uuid4()), "f", b"b", [], None, attempts=0)
    crashed = JournaledTask(str(uuid.uuid4()), "f", b"b", [], None, attempts=1)
    ix = Interchange(EP, window=4)
    plan = ix.recover([done, fresh, crashed])
    assert [s.task_id for s in plan.submit] == [fresh.task_id]
    ((tid, packed),) = plan.results
    assert tid == crashed.task_id
    msg = unpack(packed)
    assert isinstance(msg, Result) and msg.error_details is not None
    assert "stopped while this task was running" in msg.data
    sent = ix.on_connected().publish
    assert {k for k, _ in sent} == {done.task_id, crashed.task_id}


def test_recovery_retries_interrupted_tasks_when_allowed() -> None:
    crashed = JournaledTask(str(uuid.uuid4()), "f", b"b", [], None, attempts=1)
    ix = Interchange(EP, window=4, max_retries_on_system_failure=1)
    plan = ix.recover([crashed])
    assert [s.task_id for s in plan.submit] == [crashed.task_id]


def test_stopped_interchange_does_not_ack_new_deliveries() -> None:
    ix = connected()
    ix.stop_accepting()
    plan = ix.on_deliveries([delivery(1)])
    assert plan.acks == [] and plan.add_tasks == []


def test_a_task_over_the_size_limit_gets_an_error_and_is_not_journaled_or_run() -> None:
    from endpoint.protocol.limits import DEFAULT_MAX_TASK_SIZE

    assert Interchange(EP, window=1).max_task_size == DEFAULT_MAX_TASK_SIZE == 10 * 1024 * 1024
    ix = connected(window=2, max_task_size=10)
    big = Delivery(1, 1, delivery(1).headers, b"x" * 11)
    plan = ix.on_deliveries([big, delivery(2)])
    tid = str(big.headers["task_uuid"])
    assert plan.acks == [(1, 1), (1, 2)]
    assert [t.body for t in plan.add_tasks] == [b"", b"body"]  # the oversized body is dropped
    assert [s.task_id for s in plan.submit] != [tid] and len(plan.submit) == 1
    (published,) = [p for t, p in plan.publish if t == tid]
    result = unpack(published)
    assert isinstance(result, Result) and result.error_details is not None
    assert result.error_details["code"] == "TaskTooLarge"
    assert "11 bytes, more than this endpoint's limit of 10 bytes" in result.data
