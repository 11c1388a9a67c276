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
LIFECYCLE = ["MODELALIAS", "MODELALIASGET", "MODELFEEDBACK", "MODELQUALITY", "MODELDRIFT",
             "MODELEXPORT", "MODELAUDIT"]
# Called by workers, but any user allowed FCALL and the keys can call them too.
INTERNAL = ["_INFERIS_COMPLETE", "_INFERIS_PRUNE", "_INFERIS_STATS", "_INFERIS_WARMED",
            "_INFERIS_LOG", "_INFERIS_SHADOW", "_INFERIS_EDGES", "_INFERIS_DRIFT",
            "_INFERIS_LOADED"]
FUNCTIONS = ["TENSORSET", "TENSORGET", "MODELCHUNK", "MODELSTORE", "MODELGET", "MODELDEL",
             "MODELRUN", "MODELRUNMANY", *LIFECYCLE, *INTERNAL]
WORDS = ["RAW", "BLOB", "VALUES", "META", "FLOAT", "int64", "str", "bool", "MODEL", "VERSION",
         "INPUTS", "OUTPUTS", "INNAMES", "OUTNAMES", "DATA", "TIMEOUT", "TTL", "REPLYTO", "ID",
         "BACKEND", "DIGEST", "CHUNKS", "INDEX", "INPUT", "OUTPUT", "BATCH", "PREFERRED", "TAG",
         "EPHEMERAL", "UNIT",
         # lifecycle words and values: aliases, splits, feedback, drift, completions
         "SET", "DEL", "COMMIT", "HISTORY", "SHADOW", "GUARD", "LOGTTL", "BY", "NOWARM", "REF",
         "CUR", "production", "latest", "1=5000,2=5000", "1=10000", "2=9999,1=1", "1,2",
         "classification", "regression", "0.2,0.8", "nan,1", "S", "X", "L", "poison", "0-1",
         "COUNT",
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
        max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
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


# --- the lifecycle Functions and the worker-internal ones, by their grammars ---

FUZZ = "{inferis:fuzz}"  # a hash tag no worker reads: completions here touch no real queue
STREAM, DLQ, CONFIG = f"{FUZZ}:requests", f"{FUZZ}:deadletter", f"{FUZZ}:config"
NUMBER = st.one_of(
    st.sampled_from(["0", "1", "2", "-1", "-0", "0.5", "3e5", "1e7", "1e15", "1e308", "-1e308",
                     "1e309", "nan", "inf", "0x10", " 7", "99999999999", "9999999999999999",
                     "18446744073709551616", ""]),
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
)
VERSION = st.sampled_from(["1", "2", "3", "0", "-1", "01", "latest", "production", ""])
ALIAS = st.sampled_from(["production", "canary", "latest", "LATEST", "", "9lives", "a" * 65])
SPEC = st.sampled_from(["1", "2", "1=5000,2=5000", "1=9000,2=1000", "2=10000", "1=10001",
                        "1=5000,1=5000", "3", "0", "1=0,2=10000", "=", ",", "1=-1", ""])
MODEL_KEY = st.one_of(
    st.sampled_from(["scale", "inferis:{scale}", "nosuch", "inferis:{}", "", "{inferis:0}:x",
                     "a" * 129]),
    st.text(max_size=10),
).map(lambda key: [key])
RID = st.sampled_from(["fz.1", "fz.2", "", "x" * 129])
CONSUMER = st.sampled_from(["fuzz-worker", "", "x" * 300])
COLUMN = st.sampled_from(["in:X:0", "out:Y:*", "", ":"])
COUNTS = st.one_of(st.lists(NUMBER, max_size=20).map(",".join), st.sampled_from(["", ",,", "1,x"]))
TAIL = st.lists(ARG, max_size=4)
ALIAS_OPTION = st.one_of(
    st.tuples(st.just("SHADOW"), VERSION, NUMBER),
    st.tuples(st.just("GUARD"), NUMBER, NUMBER, NUMBER),
    st.tuples(st.just("LOGTTL"), NUMBER), st.tuples(st.just("BY"), st.text(max_size=300)),
    st.tuples(st.just("NOWARM")),
)
ENTRY_ID = st.sampled_from(["0-1", "1-1", "1", "x", "", "1-", "99999999999999999999-1"])
WRITE_KEY = st.sampled_from([f"{FUZZ}:out", f"{FUZZ}:replies:c-ab12", STREAM, f"{FUZZ}:h"])


def _flat(parts: tuple | list) -> list:
    return [x for part in parts
            for x in (_flat(part) if isinstance(part, tuple | list) else (part,))]


def _call(function: str, keys: st.SearchStrategy, *parts: st.SearchStrategy) -> st.SearchStrategy:
    """function, keys, a prefix that follows the grammar, then a random tail."""
    return st.tuples(st.just(function), keys, st.tuples(*parts).map(_flat), TAIL).map(
        lambda c: (c[0], c[1], [*c[2], *c[3]]))


@st.composite
def completion(draw: st.DrawFn, entry_ids: list[str]) -> tuple[str, list, list]:
    keys, args = [draw(st.sampled_from([STREAM, DLQ, "{inferis:0}:x"])), DLQ, CONFIG], []
    entries = draw(st.lists(st.tuples(
        st.one_of(st.sampled_from(entry_ids), ENTRY_ID),
        st.sampled_from(["1", "0", "256", "300", "-1", "x", "99999999999999999999"]),
        st.sampled_from(["", "poison", "malformed: EARGS x"]), st.sampled_from(["1", "3"]),
        st.lists(st.tuples(st.sampled_from(["S", "X", "L", "Q"]), NUMBER, st.binary(max_size=8),
                           WRITE_KEY), max_size=3),
    ), max_size=3))
    for entry_id, requests, reason, deliveries, writes in entries:
        args += [entry_id, requests, reason, deliveries, str(len(writes))]
        for op, ttl, value, key in writes:
            args += [op, ttl, value]
            keys.append(key)
    count = draw(st.one_of(st.just(str(len(entries))), NUMBER))
    cut = draw(st.one_of(st.just(len(keys)), st.integers(0, len(keys))))  # keys gone missing
    return "_INFERIS_COMPLETE", keys[:cut], [count, *args, *draw(TAIL)]


def test_lifecycle_and_worker_functions_get_clear_errors_and_serving_goes_on(
    served: Client, r: redis.Redis, workers, iris, redis_server
) -> None:
    served.modelstore("scale", "onnx", models.scale_model(1.0))
    served.modelstore("scale", "onnx", models.scale_model(2.0))
    r.xgroup_create(STREAM, "inferis", id="0", mkstream=True)
    for n in range(30):  # entries pending for a consumer, as a worker leaves them
        r.xadd(STREAM, {"n": str(n % 3), "reply": f"{FUZZ}:replies:c-ab12"})
    r.xreadgroup("inferis", "fuzz-worker", {STREAM: ">"})
    entry_ids = [i.decode() for i, _ in r.xrange(STREAM)]
    r.hset(f"{FUZZ}:h", "a", "b")
    # A Function that never ends would hold Redis: fail the call instead of waiting.
    conn = redis.Redis.from_url(redis_server.url, socket_timeout=10)
    calls = st.one_of(
        _call("MODELALIAS", MODEL_KEY, st.sampled_from(["SET", "set", "DEL", "COMMIT", "MOVE"]),
              ALIAS, SPEC, st.lists(ALIAS_OPTION, max_size=3)),
        _call("MODELALIASGET", MODEL_KEY, st.one_of(
            st.tuples(), st.tuples(ALIAS), st.tuples(st.just("HISTORY"), NUMBER))),
        _call("MODELFEEDBACK", MODEL_KEY, RID, NUMBER),
        _call("MODELQUALITY", MODEL_KEY),
        _call("MODELDRIFT", MODEL_KEY, VERSION,
              st.lists(st.tuples(st.sampled_from(["REF", "CUR", "NOW"]), NUMBER), max_size=2)),
        _call("_INFERIS_STATS", MODEL_KEY, CONSUMER,
              st.lists(st.tuples(VERSION, NUMBER, NUMBER, NUMBER, NUMBER), max_size=2)),
        _call("_INFERIS_WARMED", MODEL_KEY, CONSUMER, st.lists(VERSION, max_size=2)),
        _call("_INFERIS_LOG", MODEL_KEY, st.sampled_from(["60000", "0", "x"]), st.lists(st.tuples(
            RID, VERSION, st.sampled_from(["classification", "regression", "other"]), NUMBER,
            st.sampled_from(["", "0.2,0.8", "nan,1", "0.5,x", "inf"])), max_size=2)),
        _call("_INFERIS_SHADOW", MODEL_KEY, VERSION, VERSION, NUMBER, NUMBER, NUMBER),
        _call("_INFERIS_EDGES", MODEL_KEY, VERSION,
              st.lists(st.tuples(COLUMN, NUMBER, NUMBER), max_size=2)),
        _call("_INFERIS_DRIFT", MODEL_KEY, VERSION, NUMBER, st.sampled_from(["60000", "0"]),
              NUMBER, st.lists(st.tuples(COLUMN, COUNTS), max_size=2)),
        _call("MODELEXPORT", MODEL_KEY, st.lists(st.one_of(
            st.tuples(st.just("VERSION"), VERSION),
            st.tuples(st.just("BY"), st.text(max_size=300))), max_size=2)),
        _call("MODELAUDIT", MODEL_KEY, st.one_of(st.tuples(), st.tuples(st.just("COUNT"), NUMBER))),
        _call("_INFERIS_LOADED", MODEL_KEY, st.text(max_size=300),
              st.lists(st.tuples(VERSION, st.sampled_from(["ab" * 32, "", "x"])), max_size=2)),
        _call("_INFERIS_PRUNE", st.sampled_from([[STREAM], [], [f"{FUZZ}:h"], ["nosuch"]]),
              NUMBER, st.lists(CONSUMER, max_size=2)),
        completion(entry_ids),
        # and the same Functions given nothing but noise
        st.tuples(st.sampled_from(LIFECYCLE + INTERNAL), st.lists(KEY, max_size=3),
                  st.lists(ARG, max_size=10)),
    )

    @settings(
        max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(call=calls)
    def fuzz(call: tuple[str, list, list]) -> None:
        function, keys, args = call
        try:
            conn.fcall(function, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            assert str(exc).split(" ", 1)[0] in CODES, (call, str(exc))

    fuzz()
    conn.close()
    assert r.ping() and r.type(STREAM) == b"stream" and r.type(K.request_stream(0)) == b"stream"
    assert all(p.poll() is None for p in workers.processes)
    out = served.predict("guarded.model.0", {"X": iris.features[:4]})
    assert np.array_equal(out["label"], iris.reference(iris.features[:4])["label"])


def test_what_fuzzing_found_in_the_worker_functions_stays_fixed(
    r: redis.Redis, client: Client, redis_server
) -> None:
    from inferis.client import ArgumentError

    conn = redis.Redis.from_url(redis_server.url, socket_timeout=10)
    # A count of entries that is not a decimal integer, or beyond what the arguments
    # hold: tonumber('1e309') is inf, and the loop over it held Redis for ever.
    for count in ("1e309", "565570975976961615", "x"):
        with pytest.raises(redis.ResponseError, match=r"^EARGS "):
            conn.fcall("_INFERIS_COMPLETE", 3, STREAM, DLQ, CONFIG, count, "1-1", "1", "", "1",
                       "1e309")
    # An entry settled with 0 requests (appended by hand, without n): Lua sent -0 to
    # HINCRBY, which refused it, and the rest of the batch was never settled.
    r.xgroup_create(STREAM, "inferis", id="0", mkstream=True)
    first = r.xadd(STREAM, {"reply": f"{FUZZ}:replies:c-ab12"}).decode()
    second = r.xadd(STREAM, {"n": "1"}).decode()
    r.xreadgroup("inferis", "w", {STREAM: ">"})
    settled = conn.fcall("_INFERIS_COMPLETE", 4, STREAM, DLQ, CONFIG, f"{FUZZ}:out", "2",
                         first, "0", "malformed: EARGS no q", "1", "0",
                         second, "1", "", "1", "1", "S", "0", "answer")
    assert settled == [1, 1] and r.get(f"{FUZZ}:out") == b"answer" and r.xlen(STREAM) == 0
    # Worker calls without a consumer name or a stream: Lua errors on nil before.
    for function, keys in (("_INFERIS_STATS", ["inferis:{m}"]),
                           ("_INFERIS_WARMED", ["inferis:{m}"]), ("_INFERIS_PRUNE", [])):
        with pytest.raises(redis.ResponseError, match=r"^EARGS "):
            conn.fcall(function, len(keys), *keys)

    # Feedback: an increment of 10^17 or more went to HINCRBY as "1e+17" and was
    # refused after the join was half counted; a NaN prediction did the same.
    conn.fcall("_INFERIS_LOG", 1, "inferis:{m}", "60000",
               "far", "1", "regression", "0", "", "farther", "1", "regression", "0", "",
               "nan", "1", "regression", "nan", "", "cls", "1", "classification", "1", "nan,0.5")
    assert client.feedback("m", "far", 1e6) == ("joined", 1)
    assert r.hget("inferis:{m}:quality:1", "sq_err_e6") == b"1000000000000000000"
    with pytest.raises(ArgumentError, match="past what a counter holds; nothing was written"):
        client.feedback("m", "farther", 1e7)
    assert r.hget("inferis:{m}:p:farther", "fb") is None
    assert r.hget("inferis:{m}:quality:1", "n") == b"1"
    assert client.feedback("m", "farther", 1.0) == ("joined", 1)
    assert client.feedback("m", "nan", 1.0) == ("unknown", 0)  # not logged: nothing to score
    assert r.hget("inferis:{m}:p:cls", "proba") == b""  # probabilities that are not all finite
    assert client.feedback("m", "cls", 1.0) == ("joined", 1)
    conn.close()


def test_every_function_of_the_library_is_fuzzed() -> None:
    import re

    from inferis.lua import library_source

    names = set(re.findall(r"function_name = '(\w+)'", library_source()))
    assert names - {"INFERIS_VERSION"} == set(FUNCTIONS), "fuzz the new Function here too"
