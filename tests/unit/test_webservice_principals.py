"""Broker accounts: what each grant's regexes allow, names, URLs, generations (issue 13)."""

from __future__ import annotations

import re
import uuid
from urllib.parse import unquote, urlsplit

from webservice.db import Database
from webservice.principals import client_grant, endpoint_grant, with_credentials
from webservice.store.principals import PrincipalStore
from webservice.topology import Names

NAMES = Names(b"k" * 32, "tg.")
A, B = str(uuid.uuid4()), str(uuid.uuid4())


def allows(regex: str, name: str) -> bool:
    # RabbitMQ matches permission regexes with `re:run`, unanchored, like re.search.
    return re.search(regex, name) is not None


def test_an_endpoint_reads_its_own_two_queues_and_nothing_else() -> None:
    grant = endpoint_grant(NAMES, A)
    assert allows(grant.read, NAMES.tasks_queue(A))
    assert allows(grant.read, NAMES.commands_queue(A))
    for other in (
        NAMES.tasks_queue(B),
        NAMES.commands_queue(B),
        f"{A}.tasks",
        f"{NAMES.tasks_queue(A)}x",
        "results",
        "heartbeats",
        NAMES.result_queue(A, str(uuid.uuid4())),
    ):
        assert not allows(grant.read, other), other


def test_an_endpoint_configures_nothing_and_writes_only_to_results_and_heartbeats() -> None:
    grant = endpoint_grant(NAMES, A)
    for name in (NAMES.tasks_queue(A), "amq.gen-abc", "results", "x"):
        assert not allows(grant.configure, name)
    assert allows(grant.write, "results") and allows(grant.write, "heartbeats")
    for name in ("tasks", "amq.default", "results2", "xresults", NAMES.tasks_queue(A)):
        assert not allows(grant.write, name), name


def test_an_endpoint_publishes_only_on_its_own_routing_keys() -> None:
    topics = endpoint_grant(NAMES, A).topic_writes
    assert allows(topics["results"], f"{A}.results")
    assert allows(topics["heartbeats"], f"{A}.heartbeats")
    for key in (f"{B}.results", f"{A}.heartbeats", f"{A}.results.x", f"x{A}.results", "*.results"):
        assert not allows(topics["results"], key), key


def test_a_client_reads_only_its_own_task_group_queues() -> None:
    grant = client_grant(NAMES, A)
    assert grant.configure == grant.write == "^$"
    tg = str(uuid.uuid4())
    assert allows(grant.read, NAMES.result_queue(A, tg))
    for other in (NAMES.result_queue(B, tg), f"tg.{tg}", NAMES.tasks_queue(A), "results"):
        assert not allows(grant.read, other), other


def test_names_are_stable_per_key_and_differ_between_keys_and_ids() -> None:
    again = Names(b"k" * 32, "tg.")
    other_key = Names(b"j" * 32, "tg.")
    assert NAMES.tasks_queue(A) == again.tasks_queue(A)
    assert NAMES.tasks_queue(A) != other_key.tasks_queue(A)
    assert NAMES.tasks_queue(A) != NAMES.tasks_queue(B)
    assert NAMES.result_prefix(A) != NAMES.result_prefix(B)
    assert NAMES.result_prefix(A).startswith("tg.") and NAMES.result_prefix(A).endswith(".")


def test_a_handed_out_url_keeps_the_address_and_replaces_the_account() -> None:
    url = with_credentials("amqps://admin:secret@broker.example:5671/vh%2Fx", "ep.a", "p@ss/:w")
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == (
        "amqps",
        "broker.example",
        5671,
        "/vh%2Fx",
    )
    assert unquote(parts.username or "") == "ep.a"
    assert unquote(parts.password or "") == "p@ss/:w"
    assert "secret" not in url and "admin" not in url


def test_a_revoked_account_never_gets_an_old_generation_back() -> None:
    store = PrincipalStore(Database(":memory:"))
    assert store.bump("ep.x") == 1
    assert store.bump("ep.x") == 2
    store.revoke(["ep.x"])
    assert store.generation("ep.x") is None
    assert "ep.x" not in store.all()
    assert store.bump("ep.x") == 3
    assert store.all() == {"ep.x": 3}


def test_the_service_key_is_made_once() -> None:
    store = PrincipalStore(Database(":memory:"))
    key = store.key()
    assert len(key) == 32 and store.key() == key
