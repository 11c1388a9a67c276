"""The shared protocol without Redis: what the client, the worker and the Lua
library agree on, and the codecs written side by side."""

from __future__ import annotations

import ast
import operator
import re

import msgpack
import numpy as np
import pytest

from inferis.client.inflight import InFlight
from inferis.client.operations import Submit, enqueue_commands
from inferis.client.protocol import commands, defaults, entries, keys
from inferis.client.protocol.entries import InputSlot, OutputSlot, RunRequest
from inferis.client.protocol.errors import ArgumentError, InputError
from inferis.client.protocol.replies import Answer, pack_answers, unpack_answers
from inferis.client.protocol.tensor import decode_tensor, encode_tensor
from inferis.lua import library_source

_OPS = {ast.Mult: operator.mul, ast.Add: operator.add, ast.Pow: operator.pow}


def _lua_constants() -> dict[str, object]:
    """``local NAME = value`` lines of the library: numbers (with * + ^) and strings."""
    found: dict[str, object] = {}
    for name, expr in re.findall(r"^local ([A-Z_]+) = (.+?)\s*$", library_source(), re.M):
        expr = expr.replace("^", "**")
        try:
            tree = ast.parse(expr.split("--")[0].strip(), mode="eval").body
        except SyntaxError:
            continue
        found[name] = _value(tree)
    return found


def _value(node: ast.AST) -> object:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left), _value(node.right))
    return None


@pytest.mark.parametrize("name", [
    "MAX_RANK", "MAX_TENSOR_BYTES", "INLINE_LIMIT", "DEFAULT_TIMEOUT_MS", "MAX_TIMEOUT_MS",
    "DEFAULT_TTL_MS", "MAX_TTL_MS", "STAGING_TTL_MS", "GROUP", "MODELS_CHANNEL",
    "DEADLETTER_MAXLEN", "MAX_CALL_REQUESTS", "MAX_LUA_VALUES", "MAX_ZERO_FILL_BYTES",
    "AUDIT_MAXLEN", "MAX_BY_BYTES", "MAX_REGIONS", "VERSION_STRIDE",
])
def test_lua_and_python_agree_on_every_shared_constant(name: str) -> None:
    assert _lua_constants()[name] == getattr(defaults, name)


def test_lua_and_python_agree_on_the_stored_input_markers() -> None:
    lua = re.search(r"local REF_LARGE, REF_MISSING, REF_NOT_STRING = (.+)", library_source())
    assert lua is not None
    markers = [m.encode() for m in re.findall(r"'([^']*)'", lua.group(1))]
    assert markers == [entries.REF_LARGE, entries.REF_MISSING, entries.REF_NOT_STRING]


def _request(rid: str = "c.1", **kwargs: object) -> RunRequest:
    x = encode_tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    base = {
        "model": "m", "version": "2", "timeout_ms": 500, "ttl_ms": 9000, "ephemeral": True,
        "inputs": [InputSlot("X", "", x), InputSlot("", "{inferis:0}:ref")],
        "outputs": [OutputSlot("Y", "{inferis:0}:y")],
    }
    base.update(kwargs)
    return RunRequest(rid, **base)  # type: ignore[arg-type]


def _fields(records: bytes, **extra: bytes) -> dict[bytes, bytes]:
    return {b"t0": b"1000", b"reply": b"{inferis:0}:replies:c", b"n": b"1", b"q": records,
            **{k.encode(): v for k, v in extra.items()}}


def test_a_request_record_decodes_to_what_was_encoded() -> None:
    sent = _request()
    entry = entries.decode_entry("{inferis:0}:requests", "5-0", _fields(
        entries.pack_records([sent]), **{"@{inferis:0}:ref": b"INFT..."}
    ))
    (got,) = entry.requests
    assert (got.rid, got.model, got.version, got.timeout_ms, got.ttl_ms, got.ephemeral) == (
        "c.1", "m", "2", 500, 9000, True
    )
    assert got.inputs == sent.inputs and got.outputs == sent.outputs
    assert got.deadline_ms == 1500 and got.problem is None
    assert entry.refs == {"{inferis:0}:ref": b"INFT..."} and entry.count == 1
    assert entry.reply == "{inferis:0}:replies:c" and entry.base == "{inferis:0}"


def test_records_use_string_types_only_for_redis_lua() -> None:
    """Redis Lua's cmsgpack reads no bin type: tensor bytes travel as msgpack str
    (an ASCII payload decodes to str, where a bin would decode to bytes)."""
    ascii_data = _request(inputs=[InputSlot("X", "", b"plain ascii")])
    (record,) = msgpack.unpackb(entries.pack_records([ascii_data]), raw=False)
    assert record["in"] == [["X", "", "plain ascii"]]


@pytest.mark.parametrize(("record", "message"), [
    ("not a map", "not a map"),
    ({"id": "a.1", "model": 3}, "'model' must be a string"),
    ({"id": "a.1", "model": "m", "timeout": -1}, "'timeout' must be an integer"),
    ({"id": "a.1", "model": "m", "timeout": 1, "ttl": 10**13}, "'ttl' must be an integer"),
    ({"id": "a.1", "model": "m", "timeout": 1, "in": "x"}, "'in' must be an array"),
    ({"id": "a.1", "model": "m", "timeout": 1, "in": [["a"]]}, "inputs are"),
    ({"id": "bad id!", "model": "m", "timeout": 1}, "request id"),
])
def test_a_malformed_record_carries_its_own_error(record: object, message: str) -> None:
    good = _request("g.1").record()
    entry = entries.decode_entry("{inferis:0}:requests", "7-0", _fields(
        msgpack.packb([record, good], use_bin_type=False)
    ))
    bad, fine = entry.requests
    assert bad.problem is not None and message in bad.problem.message
    assert isinstance(bad.problem, ArgumentError)
    assert fine.problem is None and fine.rid == "g.1"


def test_an_unreadable_entry_is_malformed_as_a_whole() -> None:
    for fields in ({b"q": b"\x91\xc0"}, {b"t0": b"1", b"q": b"\xc1"}, {b"t0": b"1", b"q": b"\x01"}):
        with pytest.raises(entries.MalformedEntry):
            entries.decode_entry("{inferis:0}:requests", "1-0", fields)


def test_modelrun_without_id_is_known_by_its_entry_id() -> None:
    record = {**_request().record(), "id": ""}
    entry = entries.decode_entry("{inferis:0}:requests", "9-3", _fields(
        msgpack.packb([record], use_bin_type=False)
    ))
    assert entry.requests[0].rid == "9-3"


def test_answers_round_trip_with_version_digest_and_errors() -> None:
    y = encode_tensor(np.ones((2, 2), np.float64))
    answers = [
        Answer("a.1", "m", 3, "d" * 64, outputs=[("Y", None, y), ("Z", "{inferis:0}:z", None)],
               queue_us=7, run_us=9, batch=4),
        Answer("a.2", "m", 3, "d" * 64, error=InputError("input X: wrong")),
    ]
    ok, bad = unpack_answers(pack_answers(answers))
    assert (ok.rid, ok.version, ok.digest, ok.batch_size, ok.timing_us) == (
        "a.1", 3, "d" * 64, 4, {"queue_us": 7, "run_us": 9}
    )
    assert np.array_equal(ok.outputs["Y"], decode_tensor(y)) and ok.missing == ["Z"]
    assert ok.output_keys == {"Z": "{inferis:0}:z"}
    assert isinstance(bad.error, InputError) and bad.error.message == "input X: wrong"


def test_concurrent_runs_travel_together_and_keyed_ones_alone() -> None:
    inflight = InFlight("c")
    stream = keys.request_stream(0)
    count = defaults.MAX_CALL_REQUESTS + 3
    many = [Submit(_request(f"c.{i}", outputs=[]), 0) for i in range(count)]
    keyed = Submit(_request("c.k"), 0)  # names an output key: MODELRUN
    calls = enqueue_commands(inflight, [*many, keyed], list(range(len(many) + 1)))
    kinds = [c.function for c, _ in calls]
    assert kinds == ["MODELRUN", "MODELRUNMANY", "MODELRUNMANY"]
    first, second = calls[1][1], calls[2][1]
    assert len(first) == defaults.MAX_CALL_REQUESTS and len(second) == 3
    command = calls[1][0]
    assert command.keys[:3] == [stream, keys.config_of(stream), inflight.reply_stream(0)]
    assert command.keys[3:] == ["{inferis:0}:ref"]  # a stored input declared once


def test_model_store_arguments_are_checked_before_sending() -> None:
    with pytest.raises(ArgumentError, match="batch must be"):
        commands.modelstore("m", "onnx", b"x", batch=32)
    with pytest.raises(ArgumentError, match="data must be the model file's bytes"):
        commands.modelstore("m", "onnx", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="inputs: each spec"):
        commands.modelstore("m", "onnx", b"x", inputs=["a"])  # type: ignore[list-item]
