"""Errors are data: each bad request gets its own clear error, and every good
request interleaved with them still gets its exact result."""

from __future__ import annotations

import json
import time

import msgpack
import numpy as np
import pytest
import redis

from inferis.client import (
    ArgumentError,
    BackendError,
    BackendUnavailableError,
    Client,
    DeadlineExceeded,
    DigestError,
    InferisError,
    InputError,
    ModelNotFoundError,
    Ref,
    TensorError,
    decode_tensor,
    encode_tensor,
)
from inferis.client.protocol import keys as K

from .. import models

TAG = K.partition_tag(0)


def _zipmap_classifier(iris) -> bytes:
    """skl2onnx's default ZipMap output is a sequence of maps, not a tensor."""
    from skl2onnx import to_onnx

    return to_onnx(iris.forest, iris.features[:1]).SerializeToString()


def test_bad_requests_interleaved_with_good_ones(
    client: Client, workers, r: redis.Redis, iris
) -> None:
    client.modelstore("iris", "onnx", iris.blob)
    stored = client.modelstore("corrupt", "onnx", models.scale_model(2.0))
    r.setrange(K.model_key("corrupt", f"blob:{stored.digest}:0"), 5, b"\x00\xff")
    client.modelstore("fails", "onnx", models.failing_model())
    client.modelstore("caffe", "caffe", b"not a model at all")
    client.modelstore("garbage", "onnx", b"\x08\x01garbage-bytes")
    client.modelstore("zipmap", "onnx", _zipmap_classifier(iris))
    junk = b"INFT" + b"\x01\x00" + b"\xff" * (300 * 1024)  # too big to be checked at enqueue
    r.set(f"{TAG}:junk", junk)

    x = iris.features
    bad = [
        (lambda: client.submit("nope", {"X": x[:1]}), ModelNotFoundError, "nope has no versions"),
        (lambda: client.submit("iris", {"X": x[:1]}, version=99), ModelNotFoundError,
         "no version 99"),
        (lambda: client.submit("iris", [x[:1], x[:1]]), InputError, "takes 1 input"),
        (lambda: client.submit("iris", {"Z": x[:1]}), InputError, "no input named 'Z'"),
        (lambda: client.submit("iris", {"X": x[:1].astype(np.float64)}), InputError,
         "expected dtype float32, got float64"),
        (lambda: client.submit("iris", {"X": np.ones((1, 5), np.float32)}), InputError,
         "dimension 1 must be 4"),
        (lambda: client.submit("iris", {"X": np.ones(4, np.float32)}), InputError,
         "expected rank 2"),
        (lambda: client.submit("corrupt", [np.ones((1, 3), np.float32)]), DigestError,
         "does not match its digest"),
        (lambda: client.submit("fails", [np.ones(3, np.float32)]), BackendError,
         "fails v1 failed"),
        (lambda: client.submit("caffe", [np.ones(3, np.float32)]), BackendUnavailableError,
         "backend 'caffe' is not available"),
        (lambda: client.submit("garbage", [np.ones(3, np.float32)]), BackendError,
         "cannot load model garbage"),
        (lambda: client.submit("zipmap", {"X": x[:1]}), BackendError, "zipmap"),
        (lambda: client.submit("iris", {"X": x[:1]}, timeout_ms=1), DeadlineExceeded, "deadline"),
        (lambda: client.submit("iris", [Ref(f"{TAG}:junk")]), TensorError,
         r"input 1 \(\{inferis:0\}:junk\)"),
    ]
    good_rows = [x[i : i + 2] for i in range(0, 140, 10)]
    good, errors = [], []
    for (make_bad, kind, message), rows in zip(bad, good_rows, strict=True):
        good.append((rows, client.submit("iris", {"X": rows})))
        errors.append((make_bad(), kind, message))
    for future, kind, message in errors:
        with pytest.raises(kind, match=message):
            client.wait(future).raise_for_error()
    for rows, future in good:
        out = client.wait(future).raise_for_error().outputs
        assert np.array_equal(out["label"], iris.reference(rows)["label"])
        assert np.array_equal(out["probabilities"], iris.reference(rows)["probabilities"])
    assert all(p.poll() is None for p in workers.processes)  # nobody crashed
    assert client.predict("fails", [np.ones(4, np.float32)])["Y"].shape == (2, 2)


def test_enqueue_time_errors_raise_at_once(client: Client, workers) -> None:
    with pytest.raises(ArgumentError, match="model name"):
        client.predict("bad name!", [np.ones(1)])
    with pytest.raises(InferisError, match="EINPUT input 1"):
        client.modelexecute("iris", [f"{TAG}:missing"], [])


def test_a_malformed_stream_entry_is_dead_lettered(
    client: Client, workers, r: redis.Redis, iris
) -> None:
    """Someone XADDs garbage straight into the request stream: nothing in it can be
    answered, so it is parked with the reason, and serving goes on."""
    client.modelstore("iris", "onnx", iris.blob)
    stream = K.request_stream(0)
    r.xadd(stream, {"model": "iris", "ni": "not-a-number", "rid": "evil"})
    out = client.predict("iris", {"X": iris.features[:3]})
    assert np.array_equal(out["label"], iris.reference(iris.features[:3])["label"])
    deadline = time.monotonic() + 20
    while not r.xlen(K.deadletter_stream(0)) and time.monotonic() < deadline:
        time.sleep(0.05)
    dead = r.xrange(K.deadletter_stream(0))
    assert len(dead) == 1 and dead[0][1][b"reason"].startswith(b"malformed")
    assert dead[0][1][b"req.ni"] == b"not-a-number" and dead[0][1][b"req.rid"] == b"evil"
    assert r.xlen(stream) == 0


def test_a_malformed_record_is_answered_with_its_error(
    client: Client, workers, r: redis.Redis, iris
) -> None:
    """A readable entry whose record is wrong: that request gets EARGS, the one
    beside it in the same entry is served."""
    client.modelstore("iris", "onnx", iris.blob)
    good = {"id": "fine", "model": "iris", "ver": "", "timeout": 20_000, "ttl": 60_000,
            "eph": False, "in": [["X", "", encode_tensor(iris.features[:2])]], "out": []}
    bad = {**good, "id": "evil", "in": "not-a-list"}
    records = msgpack.packb([bad, good], use_bin_type=False)
    r.xadd(K.request_stream(0), {"t0": int(time.time() * 1000), "reply": "", "n": 2, "q": records})
    answers = {}
    for rid in ("evil", "fine"):
        _, line = r.blpop([f"{TAG}:r:{rid}:done"], timeout=20)
        answers[rid] = json.loads(line)
    assert answers["evil"]["status"] == "error" and answers["evil"]["code"] == "EARGS"
    assert "'in' must be an array" in answers["evil"]["error"]
    assert answers["fine"]["status"] == "ok"
    label = decode_tensor(r.get(answers["fine"]["outputs"]["label"]))
    assert np.array_equal(label, iris.reference(iris.features[:2])["label"])
    assert r.xlen(K.request_stream(0)) == 0 and r.xlen(K.deadletter_stream(0)) == 0
