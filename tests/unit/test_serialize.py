"""Serialization strategies: round trips, byte-compatibility with the official SDK, fuzzing."""

from __future__ import annotations

import base64
import contextlib
import json
import operator
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from endpoint.errors import ConfigError, SerializationError, SerializerNotAllowed
from endpoint.protocol import serialize as ser
from endpoint.protocol.serialize import (
    BY_NAME,
    STRATEGIES,
    WILDCARD_CODE,
    WILDCARD_DATA,
    deserialize,
    pack_buffers,
    parse_allowlist,
    serialize,
    serialize_result,
    unpack_buffers,
    unpack_task_buffer,
)

REPO = Path(__file__).resolve().parents[2]
CONCRETES = "globus_compute_sdk.serialize.concretes"

# Captured on the wire from the official SDK 4.19 (wire-capture.log): `add(40, b=2)`.
WIRE_ADD_CODE = (
    "328\n01\ngASV5AAAAAAAAACMCmRpbGwuX2RpbGyUjBBfY3JlYXRlX2Z1bmN0aW9ulJOUKGgAjAxfY3JlYXRl\n"
    "X2NvZGWUk5QoQwICAZRLAksASwBLAksCSwNDDJcAfAB8AXoAAABTAJROhZQpjAFhlIwBYpSGlIwd\n"
    "L3RtcC9yZXNlYXJjaC9lMmUvc2RrX3Rlc3QucHmUjANhZGSUaAxLBUMLgADYCwyIcYk1gEyUQwCU\n"
    "KSl0lFKUY19fYnVpbHRpbl9fCl9fbWFpbl9fCmgMSwGFlE50lFKUfZR9lIwPX19hbm5vdGF0aW9u\n"
    "c19flH2Uc4aUYi4=\n"
)
WIRE_ADD_ARGS = "28\n00\ngASVBQAAAAAAAABLKIWULg==\n32\n00\ngASVCgAAAAAAAAB9lIwBYpRLAnMu\n"
WIRE_ADD_RESULT = "00\ngARLKi4=\n"
WIRE_EMPTY_ARGS = "12\n00\ngAQpLg==\n12\n00\ngAR9lC4=\n"


def add(a: int, b: int = 2) -> int:
    return a + b


def greet(name: str) -> str:
    """Non-ASCII source text: framing counts code points, not bytes (ünïcødé ✓)."""
    return f"héllo {name} ✓"


class Adder:
    def __call__(self, x: int) -> int:
        return x + 1


DATA_SAMPLES: list[Any] = [
    42,
    "héllo ✓",
    [1, 2.5, None, True],
    {"a": [1, {"b": 2}]},
    (1, "x"),
    {"k": [(), {}]},
    list(range(300)),
    b"\x00\xffbytes",
    {1, 2, 3},
]
CODE_STRATEGIES = [
    "DillCode",
    "DillCodeTextInspect",
    "DillCodeSource",
    "PureSourceTextInspect",
    "PureSourceDill",
    "CombinedCode",
    "AllCodeStrategies",
]
DATA_STRATEGIES = ["DillDataBase64", "JSONData", "AllDataStrategies"]


# ---- framing ------------------------------------------------------------------------------


def test_pack_buffers_counts_code_points() -> None:
    assert pack_buffers(["ab", "é✓", ""]) == "2\nab2\né✓0\n"
    assert unpack_buffers("2\nab2\né✓0\n") == ["ab", "é✓", ""]
    assert unpack_buffers("") == []


@pytest.mark.parametrize(
    ("packed", "problem"),
    [
        ("5\nabc", "truncated"),
        ("abc", "no length prefix"),
        ("x1\na", "invalid length prefix"),
        ("-1\na", "invalid length prefix"),
        ("2\nab3", "buffer 2"),
        ("\uff11\na", "invalid length prefix"),  # a full-width 1: int() would accept it
        ("9" * 40 + "\n", "no length prefix"),
    ],
)
def test_unpack_buffers_names_the_problem(packed: str, problem: str) -> None:
    with pytest.raises(SerializationError, match=problem):
        unpack_buffers(packed)


def test_unpack_buffers_refuses_non_str() -> None:
    with pytest.raises(SerializationError, match="must be str"):
        unpack_buffers(b"1\na")  # type: ignore[arg-type]


# ---- strategies ---------------------------------------------------------------------------


def test_every_official_strategy_is_known() -> None:
    assert sorted(STRATEGIES) == sorted(
        ["00\n", "11\n", "01\n", "02\n", "03\n", "04\n", "st\n", "sd\n", "10\n", "12\n", "13\n"]
    )
    for strategy in STRATEGIES.values():
        assert strategy.import_path == f"{CONCRETES}.{strategy.name}"
        assert ser.strategy_for_path(strategy.import_path) is strategy
    assert {s.name for s in STRATEGIES.values() if s.for_code} == {
        *CODE_STRATEGIES,
        "PickleCode",
    }


@pytest.mark.parametrize("name", DATA_STRATEGIES)
@pytest.mark.parametrize("value", DATA_SAMPLES, ids=repr)
def test_data_round_trip(name: str, value: Any) -> None:
    strategy = BY_NAME[name]
    try:
        payload = strategy.serialize(value)
    except SerializationError:
        assert name == "JSONData"  # bytes and sets are not JSON
        return
    assert payload.startswith(strategy.identifier)
    expected = value
    if name != "DillDataBase64" and _json_able(value):
        expected = json.loads(json.dumps(value))  # AllDataStrategies tries JSON first
    assert deserialize(payload) == expected


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


@pytest.mark.parametrize("name", CODE_STRATEGIES)
@pytest.mark.parametrize("fn", [add, greet])
def test_code_round_trip(name: str, fn: Any) -> None:
    payload = BY_NAME[name].serialize(fn)
    assert payload.startswith(BY_NAME[name].identifier)
    loaded = deserialize(payload)
    assert loaded("wörld") == greet("wörld") if fn is greet else loaded(40, b=2) == 42


def test_base64_is_mime_style() -> None:
    payload = BY_NAME["DillDataBase64"].serialize(list(range(100)))
    lines = payload[3:].split("\n")
    assert payload.endswith("\n") and lines[-1] == ""
    assert all(len(line) == 76 for line in lines[:-2])


def test_defaults_pick_code_or_data() -> None:
    assert serialize(add).startswith("01\n")
    assert serialize(Adder()).startswith("01\n")
    assert serialize({"a": 1}).startswith("00\n")


def test_pickle_code_deserializes_only() -> None:
    payload = "02\n" + base64.encodebytes(pickle.dumps(operator.add)).decode()
    assert deserialize(payload) is operator.add
    with pytest.raises(SerializationError, match="deserialize-only"):
        BY_NAME["PickleCode"].serialize(add)


def test_source_strategies_need_a_name() -> None:
    with pytest.raises(SerializationError, match="PureSourceTextInspect"):
        BY_NAME["PureSourceTextInspect"].serialize(Adder())
    with pytest.raises(SerializationError, match="does not define 'nope'"):
        deserialize("st\nnope:x = 1\n")


def test_combination_falls_back_to_later_parts() -> None:
    broken_source = "st\nadd:def add(:\n"
    good = BY_NAME["DillCode"].serialize(add)
    assert deserialize("12\n" + pack_buffers([broken_source, good]))(1, 1) == 2
    with pytest.raises(SerializationError, match="no AllCodeStrategies part"):
        deserialize("12\n" + pack_buffers([broken_source, "zz\nnope"]))


def test_combined_code_round_trip_and_bad_part() -> None:
    payload = BY_NAME["CombinedCode"].serialize(add)
    assert payload.startswith("10\n04\n:")
    assert deserialize(payload)(1, b=1) == 2
    with pytest.raises(SerializationError, match="invalid part header"):
        deserialize("10\nxx\n:abc")


def test_unknown_header() -> None:
    with pytest.raises(SerializationError, match="unknown serialization header '99\\\\n'"):
        deserialize("99\nwhatever")


def test_garbled_dill_payload() -> None:
    with pytest.raises(SerializationError, match="DillDataBase64 could not deserialize"):
        deserialize("00\nZm9vYmFy\n")


# ---- facade -------------------------------------------------------------------------------


def test_wire_capture_task_buffer() -> None:
    fn, args, kwargs = unpack_task_buffer(WIRE_ADD_CODE + WIRE_ADD_ARGS)
    assert (args, kwargs) == ((40,), {"b": 2})
    assert serialize_result(fn(*args, **kwargs), []) == WIRE_ADD_RESULT
    assert unpack_buffers(WIRE_EMPTY_ARGS) == [serialize(()), serialize({})]


def test_task_buffer_must_hold_three() -> None:
    with pytest.raises(SerializationError, match="this one has 2"):
        unpack_task_buffer(WIRE_EMPTY_ARGS)


@pytest.mark.parametrize(
    ("parts", "problem"),
    [
        ((1, (), {}), "not a callable"),
        ((add, 5, {}), "not a tuple"),
        ((add, (), {1: 2}), "not a dict with str keys"),
    ],
)
def test_task_buffer_shapes(parts: tuple[Any, Any, Any], problem: str) -> None:
    # Serialized here, not at collection: a module still being imported is not importable
    # by name yet, so dill would pickle `add` by value (with this module's globals).
    with pytest.raises(SerializationError, match=problem):
        unpack_task_buffer(pack_buffers([serialize(p) for p in parts]))


def test_serialize_result_follows_the_header() -> None:
    as_json = serialize_result({"a": [1]}, [f"{CONCRETES}.JSONData"])
    assert as_json == '11\n{"a": [1]}'
    # Entries whose kind does not fit are skipped, as in the SDK.
    assert serialize_result(add, [f"{CONCRETES}.JSONData", f"{CONCRETES}.DillCode"])[:3] == "01\n"
    assert serialize_result(5, ["globus_compute_sdk.serialize.JSONData"]) == "11\n5"
    assert serialize_result(add, []).startswith("01\n")


def test_serialize_result_explains_failures() -> None:
    with pytest.raises(
        SerializationError, match=r"unknown serialization strategy 'no\.such\.Thing'"
    ):
        serialize_result(5, ["no.such.Thing"])
    with pytest.raises(SerializationError, match="JSONData could not serialize a set"):
        serialize_result({1}, [f"{CONCRETES}.JSONData"])
    with pytest.raises(SerializationError, match="is a code strategy but the result is not"):
        serialize_result(5, [f"{CONCRETES}.DillCode"])


# ---- allowlist ----------------------------------------------------------------------------


def test_allowlist_wildcards_expand_to_selectable() -> None:
    allow = parse_allowlist([WILDCARD_CODE, WILDCARD_DATA])
    assert allow.names == {s.name for s in STRATEGIES.values() if s.name != "PickleCode"}


def test_allowlist_accepts_aliases() -> None:
    allow = parse_allowlist(
        [
            "globus_compute_sdk.serialize.PureSourceDill",
            f"{CONCRETES}.DEFAULT_STRATEGY_DATA",
            "globus_compute_sdk.serialize.DEFAULT_STRATEGY_CODE",
        ]
    )
    assert allow.names == {"PureSourceDill", "DillDataBase64", "DillCode"}
    assert allow.import_paths == [
        f"{CONCRETES}.DillCode",
        f"{CONCRETES}.DillDataBase64",
        f"{CONCRETES}.PureSourceDill",
    ]


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ([f"{CONCRETES}.DillCode"], "at least one code and one data"),
        ([WILDCARD_DATA], "at least one code and one data"),
        ([], "at least one code and one data"),
        ([WILDCARD_CODE, f"{CONCRETES}.DillCode", WILDCARD_DATA], "cannot mix"),
        (
            ["globus_compute_sdk.serialize.Nope", WILDCARD_DATA],
            "'globus_compute_sdk.serialize.Nope'",
        ),
        ([f"{CONCRETES}.PickleCode", WILDCARD_DATA], "PickleCode is deprecated"),
        ("globus_compute_sdk.*Code", "must be a list"),
        (["globus_compute_sdk.*code", WILDCARD_DATA], "unknown serialization strategy"),
    ],
)
def test_allowlist_errors(values: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_allowlist(values)


def test_wildcard_may_mix_with_the_other_kind() -> None:
    allow = parse_allowlist([WILDCARD_CODE, f"{CONCRETES}.JSONData"])
    assert "JSONData" in allow.names and "DillDataBase64" not in allow.names


def test_disallowed_buffer_is_refused_before_anything_loads() -> None:
    allow = parse_allowlist([f"{CONCRETES}.PureSourceDill", f"{CONCRETES}.JSONData"])
    # The args buffer is garbage: refusing the code strategy must come first.
    buffer = pack_buffers([serialize(add), "00\n!!!", serialize({})])
    with pytest.raises(SerializerNotAllowed) as info:
        unpack_task_buffer(buffer, allow)
    message = str(info.value)
    assert "Code serializer DillCode" in message
    assert "PureSourceDill" in message and "JSONData" in message


def test_disallowed_data_names_its_buffer() -> None:
    allow = parse_allowlist([f"{CONCRETES}.DillCode", f"{CONCRETES}.JSONData"])
    buffer = pack_buffers([serialize(add), serialize((1,)), '11\n{"b": 2}'])
    with pytest.raises(SerializerNotAllowed, match="positional arguments must be serialized"):
        unpack_task_buffer(buffer, allow)
    ok = pack_buffers([serialize(add), "11\n[1]", '11\n{"b": 2}'])
    fn, args, kwargs = unpack_task_buffer(ok, allow)
    assert fn(*args, **kwargs) == 3


def test_allowlist_does_not_look_inside_combinations() -> None:
    # Matches the official endpoint: only the top-level strategy is checked.
    allow = parse_allowlist([f"{CONCRETES}.AllCodeStrategies", WILDCARD_DATA])
    payload = BY_NAME["AllCodeStrategies"].serialize(add)
    assert deserialize(payload, allow)(1) == 3


# ---- fuzzing ------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
headers = hs.sampled_from([*STRATEGIES, "zz\n", ""])


@FUZZ
@given(hs.text())
def test_fuzz_unpack_buffers(text: str) -> None:
    try:
        buffers = unpack_buffers(text)
    except SerializationError:
        return
    assert unpack_buffers(pack_buffers(buffers)) == buffers


@FUZZ
@given(hs.lists(hs.text()))
def test_fuzz_pack_round_trip(buffers: list[str]) -> None:
    assert unpack_buffers(pack_buffers(buffers)) == buffers


@FUZZ
@given(headers, hs.text(alphabet=hs.characters(codec="ascii")))
def test_fuzz_deserialize(header: str, body: str) -> None:
    with contextlib.suppress(SerializationError):
        deserialize(header + body)


@FUZZ
@given(hs.sampled_from(DATA_SAMPLES[:6]), hs.integers(0, 200), hs.text(max_size=3))
def test_fuzz_corrupted_payloads(value: Any, cut: int, junk: str) -> None:
    payload = BY_NAME["AllDataStrategies"].serialize(value)
    for broken in (payload[:cut], payload[:cut] + junk + payload[cut + 1 :]):
        with contextlib.suppress(SerializationError):
            deserialize(broken)


@FUZZ
@given(hs.text(max_size=60), hs.text(max_size=60))
def test_fuzz_task_buffer(a: str, b: str) -> None:
    with contextlib.suppress(SerializationError):
        unpack_task_buffer(pack_buffers([a, b, a + b]))


# ---- the official SDK, as a subprocess ----------------------------------------------------


# Both sides run this same file, so functions defined in it pickle identically (dill stores
# them by value with their file name and line numbers).
PEER_SCRIPT = textwrap.dedent(
    '''
    import json, sys

    MODE, ACTION = sys.argv[1], sys.argv[2]
    if MODE == "sdk":
        from globus_compute_sdk.serialize import ComputeSerializer, concretes
        from globus_compute_sdk.serialize.facade import parse_allowlist
        from globus_compute_sdk.serialize.utils import pack_buffers

        def strategy(name):
            return getattr(concretes, name)()

        load = ComputeSerializer().deserialize

        def allowed(values):
            return sorted(f"{c.__module__}.{c.__name__}" for c in parse_allowlist(values))
    else:
        from endpoint.protocol import serialize as ours
        from endpoint.protocol.serialize import pack_buffers

        def strategy(name):
            return ours.BY_NAME[name]

        load = ours.deserialize

        def allowed(values):
            return ours.parse_allowlist(values).import_paths


    def add(a, b=2):
        return a + b


    def greet(name):
        """ünïcødé ✓"""
        return f"héllo {name} ✓"


    DATA = {
        "int": 42, "str": "héllo ✓", "list": [1, 2.5, None, True],
        "dict": {"a": [1, {"b": 2}]}, "tuple": [1, "x"], "big": list(range(300)),
        "empty_args": (), "kwargs": {"b": 2},
    }
    CODE = {"add": add, "greet": greet}
    DATA_STRATEGIES = ["DillDataBase64", "JSONData", "AllDataStrategies"]
    CODE_STRATEGIES = [
        "DillCode", "DillCodeTextInspect", "DillCodeSource", "PureSourceTextInspect",
        "PureSourceDill", "CombinedCode", "AllCodeStrategies",
    ]


    def dump():
        out = {}
        for s in DATA_STRATEGIES:
            for k, v in DATA.items():
                out[f"{s}/{k}"] = strategy(s).serialize(v)
        for s in CODE_STRATEGIES:
            for k, f in CODE.items():
                out[f"{s}/{k}"] = strategy(s).serialize(f)
        out["packed"] = pack_buffers([out["DillCode/add"], out["DillDataBase64/empty_args"]])
        return out


    def run(obj, name):
        if name == "add":
            return obj(40, b=2)
        if name == "greet":
            return obj("wörld")
        return repr(obj)


    def loads():
        payloads = json.load(sys.stdin)
        return {k: run(load(p), k.split("/")[1]) for k, p in payloads.items() if "/" in k}


    def allowlists():
        lists = json.load(sys.stdin)
        return [allowed(values) for values in lists]


    ACTIONS = {"dump": dump, "load": loads, "allow": allowlists}
    print(json.dumps(ACTIONS[ACTION]()))
    '''
)


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory, peer_python: Path) -> dict[str, Any]:
    peer = str(peer_python)
    script = tmp_path_factory.mktemp("peer") / "serde_peer.py"
    script.write_text(PEER_SCRIPT)

    def run(mode: str, action: str, stdin: Any = None) -> Any:
        python = peer if mode == "sdk" else sys.executable
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        proc = subprocess.run(
            [python, str(script), mode, action],
            input=json.dumps(stdin) if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=script.parent,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    return {"run": run, "sdk": run("sdk", "dump"), "ours": run("ours", "dump")}


def test_we_serialize_byte_for_byte_like_the_sdk(sides: dict[str, Any]) -> None:
    sdk, ours = sides["sdk"], sides["ours"]
    assert sdk.keys() == ours.keys()
    differing = sorted(k for k in sdk if sdk[k] != ours[k])
    assert differing == []


def test_sdk_loads_what_we_serialize(sides: dict[str, Any]) -> None:
    expected = sides["run"]("sdk", "load", sides["sdk"])
    assert sides["run"]("sdk", "load", sides["ours"]) == expected
    assert expected["DillCode/add"] == 42 and expected["PureSourceDill/greet"] == "héllo wörld ✓"


def test_we_load_what_the_sdk_serializes(sides: dict[str, Any]) -> None:
    expected = sides["run"]("ours", "load", sides["ours"])
    assert sides["run"]("ours", "load", sides["sdk"]) == expected


def test_allowlists_expand_like_the_sdk(sides: dict[str, Any]) -> None:
    lists = [
        [WILDCARD_CODE, WILDCARD_DATA],
        [WILDCARD_CODE, f"{CONCRETES}.JSONData"],
        ["globus_compute_sdk.serialize.DillCode", WILDCARD_DATA],
        [f"{CONCRETES}.CombinedCode", f"{CONCRETES}.AllDataStrategies"],
    ]
    assert sides["run"]("ours", "allow", lists) == sides["run"]("sdk", "allow", lists)
