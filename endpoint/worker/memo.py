"""Reuse what a worker deserialized for an earlier task when a payload comes again.

A campaign sends the same function, and often the same arguments, thousands of times; dill
rebuilds the function's code object for every task, a large part of a short task's cost in a
worker. `PayloadMemo` keeps the last few payloads' results, but only where handing the same
object to the next task cannot be told apart from a fresh deserialization:

- values built only of immutable atoms (None, bool, int, float, complex, str, bytes, and
  tuples or frozensets of those) are shared; lists and dicts of atoms are rebuilt, so a task
  that changes its argument never changes the next task's;
- a plain function is shared when nothing of it can carry state from one call to the next:
  no closure, no attributes, defaults of atoms only, and globals that are a loaded module's
  namespace (dill's default for a script's functions is the worker's ``__main__``, which a
  fresh deserialization shares too). Each reuse checks that the function is still as it was
  stored, and deserializes afresh otherwise.

Anything else (a callable object such as the SDK's ShellFunction, a closure, a function with a
list default, a payload larger than `max_payload`) is deserialized for every task, as before.
"""

from __future__ import annotations

import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

#: Containers of atoms, and atoms, are followed at most this deep and this wide.
_MAX_DEPTH = 4
_MAX_ITEMS = 64
_ATOMS = (type(None), bool, int, float, complex, str, bytes)
#: Results remembered by value: no float (0.0 == -0.0 but they serialize differently).
_RESULT_ATOMS = (type(None), bool, int, str)
_MAX_RESULT_TEXT = 256


def _frozen(value: Any, depth: int = 0) -> bool:
    """True if `value` is made of immutable atoms only (shared safely between tasks)."""
    kind = type(value)
    if kind in _ATOMS:
        return True
    if kind in (tuple, frozenset) and depth < _MAX_DEPTH and len(value) <= _MAX_ITEMS:
        return all(_frozen(item, depth + 1) for item in value)
    return False


class _Entry:
    """How to hand out one remembered value: as is, rebuilt, or after a check."""

    __slots__ = ("code", "defaults", "kwdefaults", "rebuild", "value")

    def __init__(self, value: Any, rebuild: Callable[[Any], Any] | None = None) -> None:
        self.value = value
        self.rebuild = rebuild
        if type(value) is types.FunctionType:
            # What a call could change on the function itself, as it was when stored.
            self.code = value.__code__
            self.defaults = value.__defaults__
            kwdefaults = value.__kwdefaults__
            self.kwdefaults = None if kwdefaults is None else dict(kwdefaults)

    def get(self) -> Any:
        """The value for the next task, or `_STALE` if it changed since it was stored."""
        value = self.value
        if self.rebuild is not None:
            return self.rebuild(value)
        if type(value) is types.FunctionType and not _unchanged(value, self):
            return _STALE
        return value


_STALE: Any = object()


def _unchanged(fn: types.FunctionType, entry: _Entry) -> bool:
    return (
        not fn.__dict__
        and fn.__code__ is entry.code
        and fn.__defaults__ is entry.defaults
        and fn.__kwdefaults__ == entry.kwdefaults
    )


def _plain_function(fn: types.FunctionType) -> bool:
    if fn.__closure__ is not None or fn.__dict__:
        return False
    if fn.__defaults__ is not None and not _frozen(fn.__defaults__):
        return False
    kwdefaults = fn.__kwdefaults__
    if kwdefaults is not None and not all(_frozen(v) for v in kwdefaults.values()):
        return False
    # A namespace of its own (dill's recurse setting) would be shared by every later task.
    module = sys.modules.get(fn.__globals__.get("__name__", ""))
    return module is not None and getattr(module, "__dict__", None) is fn.__globals__


def _entry_for(value: Any) -> _Entry | None:
    kind = type(value)
    if _frozen(value):
        return _Entry(value)
    if kind is list and len(value) <= _MAX_ITEMS and all(_frozen(v) for v in value):
        return _Entry(tuple(value), rebuild=list)
    if (
        kind is dict
        and len(value) <= _MAX_ITEMS
        and all(_frozen(k) and _frozen(v) for k, v in value.items())
    ):
        return _Entry(tuple(value.items()), rebuild=dict)
    if kind is types.FunctionType and _plain_function(value):
        return _Entry(value)
    return None


class PayloadMemo:
    """The last `size` reusable deserialized payloads of this worker, by payload text."""

    def __init__(self, size: int = 32, max_payload: int = 64 * 1024) -> None:
        self.size = size
        self.max_payload = max_payload
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._results: dict[tuple[Any, ...], str] = {}
        self._lock = threading.Lock()  # the thread engine runs tasks side by side
        self.hits = 0

    def load(self, payload: str, deserialize: Callable[[str], Any]) -> Any:
        """`deserialize(payload)`, or what it gave last time if that may be reused."""
        if len(payload) > self.max_payload or self.size <= 0:
            return deserialize(payload)
        with self._lock:
            entry = self._entries.get(payload)
            if entry is not None:
                value = entry.get()
                if value is not _STALE:
                    self.hits += 1
                    self._entries.move_to_end(payload)
                    return value
                del self._entries[payload]
        value = deserialize(payload)
        fresh = _entry_for(value)
        if fresh is not None:
            with self._lock:
                self._entries[payload] = fresh
                if len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return value

    def dump(
        self,
        value: Any,
        serializers: list[str],
        serialize: Callable[[Any, list[str]], str],
    ) -> str:
        """`serialize(value, serializers)`, remembered for small atoms (None, True, 0, "ok")."""
        kind = type(value)
        if (
            kind not in _RESULT_ATOMS
            or (kind is str and len(value) > _MAX_RESULT_TEXT)
            or self.size <= 0
        ):
            return serialize(value, serializers)
        # The type is part of the key: 1 == True == 1.0, but they serialize differently.
        key = (kind, value, *serializers)
        with self._lock:
            payload = self._results.get(key)
        if payload is None:
            payload = serialize(value, serializers)
            with self._lock:
                if len(self._results) >= self.size:
                    self._results.clear()
                self._results[key] = payload
        return payload

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._results.clear()
