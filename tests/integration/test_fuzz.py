"""Hostile input: random arguments to every Functions entry point, random bytes to
the decoders. Each gets a clear error; Redis and the workers keep serving."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferis.client import BusyError, Client, ModelInfo, TensorError, decode_tensor
from inferis.client.protocol import keys as K
from inferis.engine.models.pipeline import parse_pipeline

from .. import models

CODES = ("EARGS", "ETENSOR", "EMODEL", "EINPUT", "EBUSY", "EDIGEST", "WRONGTYPE", "ENOPERM")
FUNCTIONS = ["TENSORSET", "TENSORGET", "MODELCHUNK", "MODELSTORE", "MODELGET", "MODELDEL",
             "MODELRUN", "MODELRUNMANY"]
WORDS = ["RAW", "BLOB", "VALUES", "META", "FLOAT", "int64", "str", "bool", "MODEL", "VERSION",
         "INPUTS", "OUTPUTS", "INNAMES", "OUTNAMES", "DATA", "TIMEOUT", "TTL", "REPLYTO", "ID",
         "BACKEND", "DIGEST", "CHUNKS", "INDEX", "INPUT", "OUTPUT", "BATCH", "PREFERRED", "TAG",
         "EPHEMERAL",
         "-1", "0", "1", "2", "99999999999", "1e308", "-0", "nan", "", "ab" * 32, "{inferis:0}:x",
         # numeric spellings tonumber() would take and dimensions that overflow
         "1e309", "inf", "0x10", " 7", "16384", "18446744073709551616", "4611686018427387904",
         "268435457"]
ARG = st.one_of(
    st.sampled_from(WORDS),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.text(max_size=12),
    st.binary(max_size=40),
)
KEY = st.one_of(
    st.sampled_from(["{inferis:0}:requests", "{inferis:0}:x", "m", "iris", "", "{inferis:1}:y"]),
    st.text(min_size=1, max_size=10),
)


@pytest.fixture
def served(client: Client, workers, r: redis.Redis, iris) -> Client:
    client.modelstore("iris", "onnx", iris.blob)
    client.modelstore("guarded.model.0", "onnx", iris.blob)  # a name the fuzzer never types
    r.set("{inferis:0}:x", b"INFT\x01\x00\x03\x00\x92\xa1x\x90" + b"\0" * 4)
    return client


def test_random_calls_get_clear_errors_and_serving_goes_on(
    served: Client, r: redis.Redis, workers, iris
) -> None:
    @settings(
        max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        function=st.sampled_from(FUNCTIONS),
        keys=st.lists(KEY, max_size=4),
        args=st.lists(ARG, max_size=12),
    )
    def fuzz(function: str, keys: list[str], args: list) -> None:
        try:
            r.fcall(function, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            assert str(exc).split(" ", 1)[0] in CODES, str(exc)

    fuzz()
    # whatever the fuzzing enqueued was answered or refused; the service is intact
    assert r.type(K.request_stream(0)) == b"stream"
    out = served.predict("guarded.model.0", {"X": iris.features[:4]})
    assert np.array_equal(out["label"], iris.reference(iris.features[:4])["label"])
    assert all(p.poll() is None for p in workers.processes)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=10),
       st.sampled_from(["float32", "int8", "str", "bool", "bfloat16", "nope", ""]),
       st.binary(max_size=64))
def test_declared_shapes_never_crash_the_decoder(dims: list[int], dtype: str, tail: bytes) -> None:
    import msgpack

    header = msgpack.packb([dtype, dims])
    blob = b"INFT\x01\x00" + len(header).to_bytes(2, "little") + header
    blob += b"\0" * ((-len(blob)) % 16) + tail
    with contextlib.suppress(TensorError):  # refusing is right; anything else is a bug
        decode_tensor(blob)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=30), st.text(max_size=30)), max_size=30))
def test_metadata_parser_refuses_junk_clearly(fields: list) -> None:
    with contextlib.suppress(ValueError, KeyError, TypeError):  # refused, never a crash
        ModelInfo.parse(fields)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
).map(lambda doc: __import__("json").dumps(doc).encode())))
def test_pipeline_parser_refuses_junk_clearly(blob: bytes) -> None:
    from inferis.client import ArgumentError

    with contextlib.suppress(ArgumentError):
        parse_pipeline(blob)


def test_functions_never_overwrite_non_tensor_keys(r: redis.Redis, client: Client) -> None:
    r.xadd(K.request_stream(0), {"x": "1"})
    r.hset("{inferis:0}:h", "a", "b")
    with pytest.raises(redis.ResponseError, match="holds a stream, not a tensor"):
        r.fcall("TENSORSET", 1, K.request_stream(0), "FLOAT", 1, "VALUES", 1)
    with pytest.raises(redis.ResponseError, match="holds a hash, not a tensor"):
        r.fcall(
            "MODELRUN", 3, K.request_stream(0), "{inferis:0}:in", "{inferis:0}:h", "MODEL", "m",
            "INPUTS", 1, "OUTPUTS", 1, "DATA", 1, client_tensor(),
        )
    r.set("{inferis:0}:s", "x")
    with pytest.raises(redis.ResponseError, match="holds a string, not a request stream"):
        r.fcall("MODELRUN", 1, "{inferis:0}:s", "MODEL", "m", "INPUTS", 0)
    assert r.type(K.request_stream(0)) == b"stream" and r.type("{inferis:0}:h") == b"hash"


def client_tensor() -> bytes:
    from inferis.client import encode_tensor

    return encode_tensor(np.ones(1))


def test_back_pressure_refuses_at_once(client: Client, r: redis.Redis) -> None:
    client.set_max_queue(5)
    futures = [client.submit("iris", [np.ones((1, 4), np.float32)]) for _ in range(5)]
    with pytest.raises(BusyError, match="holds 5 requests"):
        client.submit("iris", [np.ones((1, 4), np.float32)])
    assert r.xlen(K.request_stream(0)) == 5 and len(futures) == 5
    client.set_max_queue(0)
    client.submit("iris", [np.ones((1, 4), np.float32)])
    assert r.xlen(K.request_stream(0)) == 6


def test_request_keys_expire(client: Client, workers, r: redis.Redis) -> None:
    short = Client(client._url, ttl_ms=300)
    short.modelstore("s", "onnx", models.scale_model(2.0))
    result = short.run("s", [np.ones((1, 3), np.float32)], keep_keys=True).raise_for_error()
    key = result.output_keys["Y"]
    assert 0 < r.pttl(key) <= 300
    inputs = r.keys(f"{K.partition_tag(0)}:r:{result.rid}:in:*")
    assert inputs and all(0 < r.pttl(k) <= 300 for k in inputs)
    short.close()


MSGPACK_INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)
RECORD_VALUE = st.one_of(
    st.none(), st.booleans(), MSGPACK_INT, st.binary(max_size=24), st.text(max_size=8),
    st.lists(st.one_of(st.binary(max_size=40), st.text(max_size=8), MSGPACK_INT), max_size=4),
)
RECORD = st.one_of(
    st.dictionaries(st.sampled_from(["id", "model", "ver", "timeout", "ttl", "eph", "in", "out",
                                     "other"]), RECORD_VALUE, max_size=9),
    RECORD_VALUE,
)


def test_random_records_are_answered_and_serving_goes_on(
    served: Client, r: redis.Redis, workers, iris
) -> None:
    """MODELRUNMANY stores records as given: whatever they hold, each one that names
    a usable id gets an answer, and good requests beside them are served."""
    import msgpack

    from inferis.client import encode_tensor

    reply = K.reply_stream(0, "fuzz")
    good = {"id": "good.0", "model": "iris", "ver": "", "timeout": 20_000, "ttl": 60_000,
            "eph": True, "in": [["X", "", encode_tensor(iris.features[:1])]], "out": []}

    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(records=st.lists(RECORD, max_size=4))
    def fuzz(records: list) -> None:
        r.delete(reply)
        batch = [*records, good]
        packed = msgpack.packb(batch, use_bin_type=False)
        r.fcall("MODELRUNMANY", 3, K.request_stream(0), K.partition_config(0), reply,
                len(batch), packed)
        deadline = time.monotonic() + 20
        while not r.xlen(reply) and time.monotonic() < deadline:
            time.sleep(0.01)
        (_, fields), = r.xrange(reply)
        answers = msgpack.unpackb(fields[b"d"], raw=False)
        assert len(answers) == len(batch)  # every record answered, once
        assert answers[-1]["rid"] == "good.0" and answers[-1]["ok"], answers[-1]

    fuzz()
    assert all(p.poll() is None for p in workers.processes)
    out = served.predict("guarded.model.0", {"X": iris.features[:4]})
    assert np.array_equal(out["label"], iris.reference(iris.features[:4])["label"])
