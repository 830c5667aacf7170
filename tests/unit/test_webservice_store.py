"""The SQLite repositories, on an in-memory database."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from webservice.db import Database
from webservice.store import Store
from webservice.store.credentials import ACCESS, REFRESH, token_hash
from webservice.store.tasks import SUCCESS, WAITING, Completion, NewTask


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store.open(":memory:")
    yield s
    s.close()


def test_clients_verify_only_with_their_secret(store: Store) -> None:
    cid, secret = store.credentials.create_client("alice")
    assert store.credentials.verify_client(cid, secret) is not None
    assert store.credentials.verify_client(cid, secret + "x") is None
    assert store.credentials.verify_client(str(uuid.uuid4()), secret) is None


def test_create_client_with_a_given_id_and_secret_is_idempotent(store: Store) -> None:
    cid = str(uuid.uuid4())
    one, two = "one-secret-of-24-chars-x", "two-secret-of-24-chars-x"
    store.credentials.create_client("a", cid, one)
    store.credentials.create_client("a", cid, two)
    assert store.credentials.verify_client(cid, two) is not None
    assert store.credentials.verify_client(cid, one) is None


def test_tokens_expire_and_a_revoked_refresh_token_takes_its_access_tokens(store: Store) -> None:
    cid, _ = store.credentials.create_client()
    expired, _ = store.credentials.issue(ACCESS, cid, "funcx_service", ["s"], ttl_s=0)
    assert store.credentials.lookup(expired) is None
    refresh, _ = store.credentials.issue(REFRESH, cid, "funcx_service", ["s"], 60)
    access, rec = store.credentials.issue(
        ACCESS, cid, "funcx_service", ["s"], 60, refresh_hash=token_hash(refresh)
    )
    assert store.credentials.lookup(access) == rec
    assert store.credentials.lookup(refresh) is None  # not an access token
    assert store.credentials.revoke(refresh)
    assert store.credentials.lookup(access) is None


def test_revoke_by_another_client_is_a_no_op(store: Store) -> None:
    cid, _ = store.credentials.create_client()
    token, _ = store.credentials.issue(ACCESS, cid, "funcx_service", ["s"], 60)
    assert not store.credentials.revoke(token, client_id=str(uuid.uuid4()))
    assert store.credentials.lookup(token) is not None


def _tasks(store: Store, n: int, route: str = "r") -> list[str]:
    store.tasks.create_group("tg", "alice", time.time())
    ids = [str(uuid.uuid4()) for _ in range(n)]
    store.tasks.add([NewTask(t, "tg", "f", "ep", route, "alice", time.time_ns()) for t in ids])
    return ids


def test_a_result_is_stored_once(store: Store) -> None:
    (tid,) = _tasks(store, 1)
    store.tasks.complete([Completion(tid, False, "11\n1", {"a": 1}, 10.0)])
    store.tasks.complete([Completion(tid, True, "boom", None, 20.0)])
    task = store.tasks.get(tid)
    assert task is not None
    assert (task.status, task.result, task.exception, task.completion_t) == (
        SUCCESS,
        "11\n1",
        None,
        10.0,
    )
    assert task.to_api()["completion_t"] == "10.0"


def test_routing_knows_the_queue_and_whether_the_result_went_out(store: Store) -> None:
    a, b = _tasks(store, 2)
    store.tasks.set_group_queue("tg", "tg.q")
    routing = store.tasks.routing([a, b, "unknown"])
    assert set(routing) == {a, b}
    assert routing[a].status == WAITING
    assert routing[a].queue_name == "tg.q"
    store.tasks.mark_published([(a, 123)])
    assert store.tasks.routing([a])[a].published
    assert store.tasks.timings("tg")[a]["result_published_ns"] == 123


def test_pending_ids_by_route_and_endpoint(store: Store) -> None:
    a, b = _tasks(store, 2, route="uep")
    store.tasks.complete([Completion(a, False, "x", None, 1.0)])
    assert store.tasks.pending_ids(route_id="uep") == [b]
    assert store.tasks.pending_ids(endpoint_id="ep") == [b]


def test_lookups_of_many_ids_are_chunked(store: Store) -> None:
    ids = _tasks(store, 1200)
    assert len(store.tasks.get_many(ids)) == 1200
    assert len(store.tasks.routing(ids)) == 1200


def test_a_database_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "ws.db")
    Database(path).close()
    db = Database(path)
    db.conn.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    db.close()
    with pytest.raises(RuntimeError, match="schema version"):
        Database(path)
