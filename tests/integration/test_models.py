"""Model store: immutable content-addressed versions, chunking, digests, deletion."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import redis

from inferis.client import (
    ArgumentError,
    Batching,
    Client,
    DigestError,
    ModelNotFoundError,
    TensorSpec,
    UnsafeModelError,
)
from inferis.client.protocol import keys as K

from .. import models


def test_store_get_versions_and_dedupe(client: Client, r: redis.Redis) -> None:
    v1 = models.scale_model(2.0)
    v2 = models.scale_model(3.0)
    first = client.modelstore(
        "scale", "onnx", v1, format="onnx", tags={"team": "fraud"},
        inputs=[{"name": "X", "dtype": "float32", "shape": [-1, 3]}], batch=(32, 500),
        extra={"owner": "risk"},
    )
    assert (first.version, first.created) == (1, True)
    assert first.digest == hashlib.sha256(v1).hexdigest()
    again = client.modelstore("scale", "onnx", v1)
    assert (again.version, again.created) == (1, False)  # same content, same version
    second = client.modelstore("scale", "onnx", v2)
    assert (second.version, second.created) == (2, True)

    info = client.modelget("scale")
    assert info.version == 2 and info.digest == second.digest
    old, blob = client.modelget("scale", 1, blob=True)
    assert blob == v1 and old.tags == {"team": "fraud"} and old.extra == {"owner": "risk"}
    assert old.inputs == (TensorSpec("X", "float32", (None, 3)),)
    assert old.batching == Batching(32, 500)
    assert old.backend == "onnx" and old.device == "CPU" and old.size == len(v1)
    assert client.modelversions("scale") == [1, 2]
    assert client.modellist() == ["scale"]


def test_large_blobs_are_chunked_and_reassembled(client: Client, r: redis.Redis) -> None:
    blob = models.scale_model(5.0)
    stored = client.modelstore("chunky", "onnx", blob, chunk_size=20)
    info, back = client.modelget("chunky", blob=True)
    assert info.chunks == (len(blob) + 19) // 20 > 1
    assert back == blob
    chunk_keys = [K.model_key("chunky", f"blob:{stored.digest}:{i}") for i in range(info.chunks)]
    assert all(r.ttl(k) == -1 for k in chunk_keys)  # committed chunks never expire


def test_commit_refuses_missing_chunks(r: redis.Redis) -> None:
    digest = "ab" * 32
    r.fcall("MODELCHUNK", 1, "m", "DIGEST", digest, "INDEX", 0, "BLOB", b"x")
    with pytest.raises(redis.ResponseError, match="EARGS chunk 1 of"):
        r.fcall("MODELSTORE", 1, "m", "BACKEND", "onnx", "DIGEST", digest, "CHUNKS", 2)
    assert r.exists(K.model_key("m", "seq")) == 0


def test_a_corrupted_blob_is_detected_on_read(client: Client, r: redis.Redis) -> None:
    stored = client.modelstore("m", "onnx", models.scale_model(2.0))
    r.setrange(K.model_key("m", f"blob:{stored.digest}:0"), 10, b"\xff")
    with pytest.raises(DigestError, match="does not match its digest"):
        client.modelget("m", blob=True)


def test_delete_one_version_then_all(client: Client, r: redis.Redis) -> None:
    for factor in (1.0, 2.0, 3.0):
        client.modelstore("d", "onnx", models.scale_model(factor))
    assert client.modeldel("d", 3) == 1
    assert client.modelget("d").version == 2  # latest falls back
    with pytest.raises(ModelNotFoundError, match="has no version 3"):
        client.modelget("d", 3)
    assert client.modeldel("d") == 2
    assert client.modellist() == []
    with pytest.raises(ModelNotFoundError, match="has no versions"):
        client.modelget("d")
    assert not r.keys("inferis:{d}:blob:*") and not r.keys("inferis:{d}:v:*")
    # numbers are never reused: new content gets a new number
    assert client.modelstore("d", "onnx", models.scale_model(9.0)).version == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["DIGEST", "ab" * 32, "BLOB", "x"], "EARGS MODELSTORE needs BACKEND"),
        (["BACKEND", "onnx", "BLOB", "x"], "EARGS DIGEST must be"),
        (["BACKEND", "onnx", "DIGEST", "zz" * 32, "BLOB", "x"], "EARGS DIGEST must be"),
        (["BACKEND", "onnx", "DIGEST", "ab" * 32], "EARGS MODELSTORE needs exactly one"),
        (["BACKEND", "onnx", "DIGEST", "ab" * 32, "BLOB", ""], "EARGS BLOB is empty"),
        (["BACKEND", "onnx", "BOGUS", 1], "EARGS MODELSTORE option BOGUS is unknown"),
        (["BACKEND", "onnx", "INPUT", "x", "cplx", "1", "BLOB", "x"], "unknown dtype cplx"),
        (["BACKEND", "onnx", "META", "[1", "BLOB", "x"], "EARGS META must be a JSON object"),
    ],
)
def test_modelstore_refuses_bad_arguments(r: redis.Redis, args: list, message: str) -> None:
    with pytest.raises(redis.ResponseError, match=message):
        r.fcall("MODELSTORE", 1, "m", *args)
    assert not r.keys("inferis:{m}:*")


@pytest.mark.parametrize("name", ["", "a{b}", "x" * 129, "spaced name", "ünï"])
def test_model_names_are_checked(client: Client, r: redis.Redis, name: str) -> None:
    with pytest.raises(ArgumentError):
        client.modelstore(name, "onnx", b"abc")
    with pytest.raises(redis.ResponseError, match="EARGS model name"):
        r.fcall("MODELGET", 1, name or "-")


def test_unsafe_formats_are_refused_by_workers(client: Client, workers) -> None:
    client.modelstore("pickled", "onnx", models.scale_model(2.0), format="pickle")
    with pytest.raises(UnsafeModelError, match="--trust-unsafe-formats"):
        client.predict("pickled", [np.ones((1, 3), np.float32)])


def test_modelstore_reports_upload_progress_per_chunk(client) -> None:
    blob = bytes(range(256)) * (40 * 1024 * 1024 // 256 + 7)  # 3 chunks of 16 MiB
    seen: list[tuple[int, int]] = []
    stored = client.modelstore("big", "onnx", blob, progress=lambda s, t: seen.append((s, t)))
    assert stored.created
    assert [t for _, t in seen] == [len(blob)] * len(seen)
    sent = [s for s, _ in seen]
    assert sent == sorted(sent) and sent[-1] == len(blob) and len(set(sent)) >= 3
    with pytest.raises(ArgumentError, match="progress"):
        client.modelstore("big", "onnx", blob, progress=5)
