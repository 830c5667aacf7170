"""The official SDK's serialization strategies, byte-compatible with globus-compute-sdk 4.19.

A serialized payload is a 3-character header (two id characters and ``\\n``) followed by a
strategy-specific body. Several payloads travel together as a *packed* string: each one
prefixed by its length in ``str`` code points and a newline (`pack_buffers`).

Strategies, by header:

====  =======================  =====  ================================================
id    class                    kind   body
====  =======================  =====  ================================================
00    DillDataBase64           data   MIME base64 of ``dill.dumps(obj)`` (default data)
11    JSONData                 data   ``json.dumps(obj)``
01    DillCode                 code   MIME base64 of ``dill.dumps(fn)`` (default code)
02    PickleCode               code   MIME base64 of a pickle; deserialize only
03    DillCodeTextInspect      code   base64 dill of ``(name, inspect.getsource(fn))``
04    DillCodeSource           code   base64 dill of ``(name, dill.source.getsource(fn))``
st    PureSourceTextInspect    code   ``name:`` + ``inspect.getsource(fn)``
sd    PureSourceDill           code   ``name:`` + ``dill.source.getsource(fn)``
10    CombinedCode             code   ``:``-joined header/body pairs of 04, 01, 03, sd, st
12    AllCodeStrategies        code   packed st, sd and 01 payloads; first that loads wins
13    AllDataStrategies        data   packed 11 and 00 payloads; first that loads wins
====  =======================  =====  ================================================

Every failure surfaces as `SerializationError` (or its subclass `SerializerNotAllowed`), so a
worker can turn any bad payload into an error Result without guessing at library exceptions.

Source-based strategies (st, sd, 03, 04, 10) ``exec`` the sender's source text; that is no
more dangerous than unpickling, which the default strategies already do. The optional
`Allowlist` (the ``allowed_serializers`` engine key) is the endpoint's only control: like the
official endpoint it checks each payload's *top-level* strategy, not the parts inside the
combination strategies 12 and 13.
"""

from __future__ import annotations

import base64
import inspect
import json
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import dill
import dill.source

from endpoint.errors import ConfigError, SerializationError, SerializerNotAllowed

HEADER_LEN = 3
SDK_PACKAGE = "globus_compute_sdk.serialize"
#: The module every official strategy class lives in; its import paths are canonical.
CONCRETES_MODULE = f"{SDK_PACKAGE}.concretes"
WILDCARD_CODE = "globus_compute_sdk.*Code"
WILDCARD_DATA = "globus_compute_sdk.*Data"

# A length prefix longer than this cannot describe a real buffer; refusing it early keeps
# `int()` from chewing on megabytes of digits.
_MAX_PREFIX_DIGITS = 18
_SNIPPET = 40


# ---------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------


def pack_buffers(buffers: list[str]) -> str:
    """Frame each buffer as ``<len>\\n<buffer>``; ``len`` counts code points, not bytes."""
    return "".join(f"{len(b)}\n{b}" for b in buffers)


def unpack_buffers(packed: str) -> list[str]:
    """Split a `pack_buffers` string back into its buffers.

    Raises SerializationError naming the buffer and what is wrong with it (missing newline,
    bad length prefix, or fewer characters left than the prefix promises).
    """
    if not isinstance(packed, str):
        raise SerializationError(f"packed buffers must be str, not {type(packed).__name__}")
    buffers: list[str] = []
    pos = 0
    while pos < len(packed):
        buffer, pos = _next_buffer(packed, pos, len(buffers) + 1)
        buffers.append(buffer)
    return buffers


def _next_buffer(packed: str, pos: int, ordinal: int) -> tuple[str, int]:
    """The buffer framed at `pos` and the offset just past it."""
    newline = packed.find("\n", pos, pos + _MAX_PREFIX_DIGITS + 1)
    if newline < 0:
        head = packed[pos : pos + _SNIPPET]
        raise SerializationError(
            f"buffer {ordinal}: no length prefix ending in a newline at offset {pos}"
            f" (found {head!r})"
        )
    prefix = packed[pos:newline]
    if not (prefix.isascii() and prefix.isdigit()):
        raise SerializationError(f"buffer {ordinal}: invalid length prefix {prefix!r}")
    length = int(prefix)
    start = newline + 1
    remaining = len(packed) - start
    if remaining < length:
        raise SerializationError(
            f"buffer {ordinal}: truncated, its prefix promises {length} characters"
            f" but only {remaining} remain"
        )
    return packed[start : start + length], start + length


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------


def _b64encode(raw: bytes) -> str:
    # MIME style (76-character lines, trailing newline): what `codecs.encode(b, "base64")`
    # produces, which the SDK uses; the bytes must match for payloads to compare equal.
    return base64.encodebytes(raw).decode("ascii")


def _b64decode(text: str) -> bytes:
    # Lenient like the SDK's decoder: characters outside the alphabet are skipped.
    return base64.decodebytes(text.encode())


def _snippet(text: str) -> str:
    return repr(text[:_SNIPPET] + ("..." if len(text) > _SNIPPET else ""))


class Strategy(ABC):
    """One serialization strategy; instances are stateless singletons (see `STRATEGIES`)."""

    identifier: ClassVar[str]
    for_code: ClassVar[bool]
    #: False for deserialize-only strategies, which may not be allowlisted or requested.
    selectable: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def import_path(self) -> str:
        return f"{CONCRETES_MODULE}.{self.name}"

    @property
    def kind(self) -> str:
        return "code" if self.for_code else "data"

    def serialize(self, obj: Any) -> str:
        try:
            return self.identifier + self._encode(obj)
        except SerializationError:
            raise
        except Exception as e:
            raise SerializationError(
                f"{self.name} could not serialize a {type(obj).__name__}: {e!r}"
            ) from e

    def deserialize(self, payload: str) -> Any:
        if not payload.startswith(self.identifier):
            raise SerializationError(
                f"{self.name} payload must start with {self.identifier!r}, got {_snippet(payload)}"
            )
        try:
            return self._decode(payload[HEADER_LEN:])
        except SerializationError:
            raise
        except Exception as e:
            raise SerializationError(f"{self.name} could not deserialize: {e!r}") from e

    @abstractmethod
    def _encode(self, obj: Any) -> str: ...

    @abstractmethod
    def _decode(self, body: str) -> Any: ...

    def __repr__(self) -> str:
        return f"<{self.name} {self.identifier[:2]!r}>"


def _exec_source(name: str, source: str) -> Any:
    """Run a function's source in a fresh namespace and return the object it defines."""
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    if name not in namespace:
        raise SerializationError(f"source text does not define {name!r}")
    return namespace[name]


class DillDataBase64(Strategy):
    identifier = "00\n"
    for_code = False

    def _encode(self, obj: Any) -> str:
        return _b64encode(dill.dumps(obj))

    def _decode(self, body: str) -> Any:
        return dill.loads(_b64decode(body))


class JSONData(Strategy):
    identifier = "11\n"
    for_code = False

    def _encode(self, obj: Any) -> str:
        return json.dumps(obj)

    def _decode(self, body: str) -> Any:
        return json.loads(body)


class DillCode(Strategy):
    identifier = "01\n"
    for_code = True

    def _encode(self, obj: Any) -> str:
        return _b64encode(dill.dumps(obj))

    def _decode(self, body: str) -> Any:
        return dill.loads(_b64decode(body))


class PickleCode(Strategy):
    """Retired by the SDK long ago; kept so very old registered functions still load."""

    identifier = "02\n"
    for_code = True
    selectable = False

    def _encode(self, obj: Any) -> str:
        raise SerializationError("PickleCode is deserialize-only; it cannot serialize")

    def _decode(self, body: str) -> Any:
        return pickle.loads(_b64decode(body))


class DillCodeTextInspect(Strategy):
    identifier = "03\n"
    for_code = True

    def _encode(self, obj: Any) -> str:
        return _b64encode(dill.dumps((obj.__name__, inspect.getsource(obj))))

    def _decode(self, body: str) -> Any:
        return _exec_source(*_name_and_source(dill.loads(_b64decode(body))))


class DillCodeSource(Strategy):
    identifier = "04\n"
    for_code = True

    def _encode(self, obj: Any) -> str:
        source = dill.source.getsource(obj, lstrip=True)
        return _b64encode(dill.dumps((obj.__name__, source)))

    def _decode(self, body: str) -> Any:
        return _exec_source(*_name_and_source(dill.loads(_b64decode(body))))


def _name_and_source(pair: Any) -> tuple[str, str]:
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
        raise SerializationError("expected a (name, source) pair of strings")
    return pair[0], pair[1]


class PureSourceTextInspect(Strategy):
    identifier = "st\n"
    for_code = True

    def _encode(self, obj: Any) -> str:
        return f"{obj.__name__}:{inspect.getsource(obj)}"

    def _decode(self, body: str) -> Any:
        return _exec_source(*_split_name(body))


class PureSourceDill(Strategy):
    identifier = "sd\n"
    for_code = True

    def _encode(self, obj: Any) -> str:
        return f"{obj.__name__}:{dill.source.getsource(obj, lstrip=True)}"

    def _decode(self, body: str) -> Any:
        return _exec_source(*_split_name(body))


def _split_name(body: str) -> tuple[str, str]:
    name, sep, source = body.partition(":")
    if not sep:
        raise SerializationError("source payload has no 'name:' prefix")
    return name, source


class CombinedCode(Strategy):
    """Deprecated SDK strategy: ``:``-joined header/body pairs of several code strategies.

    The format is ambiguous (source text contains colons), so, like the SDK, decoding pairs
    up the ``:``-separated pieces and tries each known one in order; the base64 parts that
    come first are the ones that reliably survive.
    """

    identifier = "10\n"
    for_code = True
    _PARTS = ("04\n", "01\n", "03\n", "sd\n", "st\n")

    def _encode(self, obj: Any) -> str:
        pieces: list[str] = []
        for ident in self._PARTS:
            try:
                payload = STRATEGIES[ident].serialize(obj)
            except SerializationError:
                continue
            pieces += [payload[:HEADER_LEN], payload[HEADER_LEN:]]
        if not pieces:
            raise SerializationError("CombinedCode: no code strategy could serialize it")
        return ":".join(pieces)

    def _decode(self, body: str) -> Any:
        pieces = iter(body.split(":"))
        errors: list[str] = []
        for ident, encoded in zip(pieces, pieces, strict=False):
            if ident not in self._PARTS:
                errors.append(f"invalid part header {ident!r}")
                break
            try:
                return STRATEGIES[ident].deserialize(ident + encoded)
            except SerializationError as e:
                errors.append(str(e))
        raise SerializationError(f"no CombinedCode part could be loaded: {'; '.join(errors)}")


class _Combination(Strategy):
    """Packed full payloads of several strategies; decoding returns the first that loads."""

    _PARTS: ClassVar[tuple[str, ...]]

    def _encode(self, obj: Any) -> str:
        payloads, errors = [], []
        for ident in self._PARTS:
            try:
                payloads.append(STRATEGIES[ident].serialize(obj))
            except SerializationError as e:
                errors.append(str(e))
        if not payloads:
            raise SerializationError(f"{self.name}: every part failed: {'; '.join(errors)}")
        return pack_buffers(payloads)

    def _decode(self, body: str) -> Any:
        errors: list[str] = []
        for part in unpack_buffers(body):
            ident, sep, _ = part.partition("\n")
            strategy = STRATEGIES.get(ident + sep) if sep else None
            if strategy is None:
                errors.append(f"part with unknown header {_snippet(part)}")
                continue
            try:
                return strategy.deserialize(part)
            except SerializationError as e:
                errors.append(str(e))
        raise SerializationError(f"no {self.name} part could be loaded: {'; '.join(errors)}")


class AllCodeStrategies(_Combination):
    identifier = "12\n"
    for_code = True
    _PARTS = ("st\n", "sd\n", "01\n")


class AllDataStrategies(_Combination):
    identifier = "13\n"
    for_code = False
    _PARTS = ("11\n", "00\n")


#: Every strategy by header.
STRATEGIES: dict[str, Strategy] = {
    s.identifier: s
    for s in (
        DillDataBase64(),
        JSONData(),
        DillCode(),
        PickleCode(),
        DillCodeTextInspect(),
        DillCodeSource(),
        PureSourceTextInspect(),
        PureSourceDill(),
        CombinedCode(),
        AllCodeStrategies(),
        AllDataStrategies(),
    )
}
BY_NAME: dict[str, Strategy] = {s.name: s for s in STRATEGIES.values()}
DEFAULT_CODE: Strategy = STRATEGIES["01\n"]
DEFAULT_DATA: Strategy = STRATEGIES["00\n"]


def _import_paths() -> dict[str, Strategy]:
    # The SDK resolves strategy import paths by importing them, so every name its packages
    # export resolves; these are the ones a config or a result_serializers header can carry.
    paths = {s.import_path: s for s in STRATEGIES.values()}
    paths |= {f"{SDK_PACKAGE}.{s.name}": s for s in STRATEGIES.values() if s.selectable}
    for module in (CONCRETES_MODULE, SDK_PACKAGE):
        paths[f"{module}.DEFAULT_STRATEGY_CODE"] = DEFAULT_CODE
        paths[f"{module}.DEFAULT_STRATEGY_DATA"] = DEFAULT_DATA
    return paths


IMPORT_PATHS: dict[str, Strategy] = _import_paths()


def strategy_for_path(path: str) -> Strategy | None:
    """The strategy an official import path names, or None."""
    return IMPORT_PATHS.get(path) if isinstance(path, str) else None


def strategy_for_payload(payload: str) -> Strategy:
    """The strategy a payload's header names; SerializationError if there is none."""
    if not isinstance(payload, str):
        raise SerializationError(f"payload must be str, not {type(payload).__name__}")
    strategy = STRATEGIES.get(payload[:HEADER_LEN])
    if strategy is None:
        raise SerializationError(
            f"unknown serialization header {payload[:HEADER_LEN]!r}"
            f" (payload starts {_snippet(payload)})"
        )
    return strategy


# ---------------------------------------------------------------------------------------------
# Allowlist
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allowlist:
    """The strategies an endpoint accepts for incoming functions and arguments."""

    names: frozenset[str]

    @property
    def import_paths(self) -> list[str]:
        return sorted(BY_NAME[n].import_path for n in self.names)

    def permits(self, strategy: Strategy) -> bool:
        return strategy.name in self.names

    def check(self, strategy: Strategy, what: str | None = None) -> None:
        """Raise SerializerNotAllowed unless `strategy` is allowed; `what` names the buffer."""
        if strategy.name in self.names:
            return
        what = what or ("function" if strategy.for_code else "arguments")
        same_kind = sorted(n for n in self.names if BY_NAME[n].for_code == strategy.for_code)
        raise SerializerNotAllowed(
            f"{strategy.kind.capitalize()} serializer {strategy.name} is disabled by this"
            f" endpoint's configuration: the {what} must be serialized with one of the allowed"
            f" {strategy.kind} serializers: {', '.join(same_kind)}."
            f" Allowed serializers: {', '.join(sorted(self.names))}"
        )


def parse_allowlist(values: Iterable[str]) -> Allowlist:
    """Validate ``allowed_serializers`` config values (import paths or the two wildcards).

    Needs at least one code and one data entry, and a wildcard may not be mixed with specific
    entries of the same kind. Raises ConfigError naming the offending value.
    """
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ConfigError(f"allowed_serializers must be a list of strings, got {values!r}")
    values = list(values)
    wildcards: set[bool] = set()  # the for_code kinds named by a wildcard
    specific: set[Strategy] = set()
    for value in values:
        if value in (WILDCARD_CODE, WILDCARD_DATA):
            wildcards.add(value == WILDCARD_CODE)
        else:
            specific.add(_allowlist_entry(value))
    for for_code in wildcards:
        clash = sorted(s.name for s in specific if s.for_code == for_code)
        if clash:
            wildcard = WILDCARD_CODE if for_code else WILDCARD_DATA
            raise ConfigError(
                f"allowed_serializers: cannot mix {wildcard!r} with specific"
                f" {'code' if for_code else 'data'} serializers ({', '.join(clash)})"
            )
    names = {s.name for s in specific}
    names |= {s.name for s in STRATEGIES.values() if s.selectable and s.for_code in wildcards}
    if {BY_NAME[n].for_code for n in names} != {True, False}:
        raise ConfigError(
            "allowed_serializers must contain at least one code and one data"
            f" serializer or wildcard (got {values})"
        )
    return Allowlist(frozenset(names))


def _allowlist_entry(value: Any) -> Strategy:
    strategy = strategy_for_path(value)
    if strategy is None:
        known = ", ".join(sorted({s.import_path for s in STRATEGIES.values() if s.selectable}))
        raise ConfigError(
            f"allowed_serializers: unknown serialization strategy {value!r}; expected an"
            f" import path ({known}) or one of the wildcards {WILDCARD_CODE!r},"
            f" {WILDCARD_DATA!r}"
        )
    if not strategy.selectable:
        raise ConfigError(
            f"allowed_serializers: {strategy.name} is deprecated and cannot be allowed"
        )
    return strategy


# ---------------------------------------------------------------------------------------------
# Facade
# ---------------------------------------------------------------------------------------------


def serialize(obj: Any) -> str:
    """Serialize with the SDK defaults: DillCode for callables, DillDataBase64 otherwise."""
    return (DEFAULT_CODE if callable(obj) else DEFAULT_DATA).serialize(obj)


def deserialize(payload: str, allow: Allowlist | None = None, what: str | None = None) -> Any:
    """Deserialize one payload, refusing its top-level strategy unless `allow` permits it."""
    strategy = strategy_for_payload(payload)
    if allow is not None:
        allow.check(strategy, what)
    return strategy.deserialize(payload)


def serialize_result(obj: Any, result_serializers: list[str]) -> str:
    """Serialize a task result as the SDK's ``result_serializers`` header asks.

    The entries are strategy import paths, tried in order; the first one whose kind (code or
    data) matches ``callable(obj)`` and that succeeds wins. An empty list means DillDataBase64
    then DillCode. If none works the SerializationError lists why each entry failed, naming
    unknown paths.
    """
    errors: list[str] = []
    for entry in result_serializers or (DEFAULT_DATA.import_path, DEFAULT_CODE.import_path):
        strategy = strategy_for_path(entry)
        problem = _result_strategy_problem(entry, strategy, callable(obj))
        if strategy is None or problem:
            errors.append(problem)
            continue
        try:
            return strategy.serialize(obj)
        except SerializationError as e:
            errors.append(str(e))
    raise SerializationError(
        f"could not serialize the task result (a {type(obj).__name__}) with any of the"
        f" requested result_serializers: {'; '.join(errors)}"
    )


def _result_strategy_problem(entry: Any, strategy: Strategy | None, is_code: bool) -> str:
    if strategy is None:
        return f"unknown serialization strategy {entry!r}"
    if not strategy.selectable:
        return f"{strategy.name} is deprecated and cannot serialize"
    if strategy.for_code != is_code:
        target = "a callable" if is_code else "not callable"
        return f"{strategy.name} is a {strategy.kind} strategy but the result is {target}"
    return ""


TaskParts = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
_ROLES = ("function", "positional arguments", "keyword arguments")


#: How a payload becomes its object: ``load(payload, strategy.deserialize)``; a worker may pass
#: one that reuses earlier results (`endpoint.worker.memo`).
Loader = Callable[[str, Callable[[str], Any]], Any]


def _load_fresh(payload: str, deserialize: Callable[[str], Any]) -> Any:
    return deserialize(payload)


def unpack_task_buffer(
    task_buffer: str, allow: Allowlist | None = None, load: Loader = _load_fresh
) -> TaskParts:
    """Split a task buffer into (function, args, kwargs).

    The buffer must hold exactly three framed payloads. All three strategies are checked
    against `allow` before anything is deserialized, so a refused payload never runs.
    """
    parts = unpack_buffers(task_buffer)
    if len(parts) != 3:
        raise SerializationError(
            f"a task buffer holds 3 buffers (function, args, kwargs), this one has {len(parts)}"
        )
    strategies = [strategy_for_payload(p) for p in parts]
    if allow is not None:
        for strategy, role in zip(strategies, _ROLES, strict=True):
            allow.check(strategy, role)
    fn, args, kwargs = (load(p, s.deserialize) for s, p in zip(strategies, parts, strict=True))
    return _checked_parts(fn, args, kwargs)


def _checked_parts(fn: Any, args: Any, kwargs: Any) -> TaskParts:
    if not callable(fn):
        raise SerializationError(f"the function buffer holds a {type(fn).__name__}, not a callable")
    if not isinstance(args, tuple | list):
        raise SerializationError(f"the args buffer holds a {type(args).__name__}, not a tuple")
    if not (isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
        raise SerializationError(
            f"the kwargs buffer holds a {type(kwargs).__name__}, not a dict with str keys"
        )
    return fn, tuple(args), kwargs
