"""Durable state in SQLite, one repository per concept, all on one `Database`."""

from __future__ import annotations

from webservice.db import Database
from webservice.store.credentials import CredentialStore
from webservice.store.endpoints import EndpointStore
from webservice.store.functions import FunctionStore
from webservice.store.heartbeats import HeartbeatStore
from webservice.store.policies import PolicyStore
from webservice.store.principals import PrincipalStore
from webservice.store.tasks import TaskStore


class Store:
    """Every repository of one database; what the routes and consumers are given."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.credentials = CredentialStore(db)
        self.functions = FunctionStore(db)
        self.endpoints = EndpointStore(db)
        self.tasks = TaskStore(db)
        self.heartbeats = HeartbeatStore(db)
        self.principals = PrincipalStore(db)
        self.policies = PolicyStore(db)

    @classmethod
    def open(cls, path: str) -> Store:
        return cls(Database(path))

    def close(self) -> None:
        self.db.close()


__all__ = [
    "CredentialStore",
    "EndpointStore",
    "FunctionStore",
    "HeartbeatStore",
    "PolicyStore",
    "PrincipalStore",
    "Store",
    "TaskStore",
]
