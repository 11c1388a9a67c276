"""End-to-end runs through Redis: results equal the same model run in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import redis

from inferis.client import ArgumentError, Client, ModelNotFoundError, Ref, decode_tensor
from inferis.client.protocol import keys as K
from inferis.client.protocol.defaults import GROUP

from .. import models


def test_predict_matches_in_process_onnxruntime(client: Client, workers, iris) -> None:
    client.modelstore("iris", "onnx", iris.blob)
    batch = iris.features[::7]
    out = client.predict("iris", {"X": batch})
    expected = iris.reference(batch)
    assert out["label"].dtype == np.int64
    assert np.array_equal(out["label"], expected["label"])
    assert np.array_equal(out["probabilities"], expected["probabilities"])  # bit-exact
    assert np.array_equal(out["label"], iris.forest.predict(batch))
    positional = client.predict("iris", [batch])
    assert np.array_equal(positional["label"], expected["label"])


def test_versions_are_selected_by_number_and_latest(client: Client, workers) -> None:
    client.modelstore("scale", "onnx", models.scale_model(2.0))
    x = np.array([[1, 2, 3]], np.float32)
    assert client.predict("scale", [x])["Y"].tolist() == [[2, 4, 6]]
    client.modelstore("scale", "onnx", models.scale_model(3.0))
    # the MODELSTORE notice reaches workers before the next run
    assert client.predict("scale", [x])["Y"].tolist() == [[3, 6, 9]]
    assert client.predict("scale", [x], version=1)["Y"].tolist() == [[2, 4, 6]]
    assert client.run("scale", [x], version="latest").version == 2
    client.modeldel("scale", 2)
    assert client.predict("scale", [x])["Y"].tolist() == [[2, 4, 6]]
    with pytest.raises(ModelNotFoundError, match="has no version 2"):
        client.predict("scale", [x], version=2)


def test_outputs_are_written_next_to_the_inputs(client: Client, workers, r: redis.Redis) -> None:
    client.modelstore("two", "onnx", models.two_input_model())
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    b = np.full((2, 3), 0.5)
    result = client.run("two", {"B": b, "A": a}, keep_keys=True).raise_for_error()
    assert np.array_equal(result.outputs["S"], a + b)
    assert np.array_equal(result.outputs["P"], a * b)
    for name, key in result.output_keys.items():
        assert K.base_of(key) == K.partition_tag(0)  # same hash tag as the inputs
        assert key.endswith(f":out:{name}")
        assert np.array_equal(decode_tensor(r.get(key)), result.outputs[name])
        assert 0 < r.pttl(key) <= client.ttl_ms
    assert r.xlen(K.request_stream(0)) == 0  # answered entries leave the stream
    assert r.xpending(K.request_stream(0), GROUP)["pending"] == 0


def test_a_prediction_leaves_no_keys_behind(client: Client, workers, r: redis.Redis) -> None:
    client.modelstore("two", "onnx", models.two_input_model())
    before = set(r.keys("{inferis:0}:r:*"))
    big = np.ones((300, 200))  # above the inline limits: kept as keys, for the TTL only
    small = client.run("two", {"A": np.ones((2, 2)), "B": np.ones((2, 2))}).raise_for_error()
    assert np.array_equal(small.outputs["S"], np.full((2, 2), 2.0))
    assert set(r.keys("{inferis:0}:r:*")) == before  # nothing written for a small run
    large = client.run("two", {"A": big, "B": big}).raise_for_error()
    assert np.array_equal(large.outputs["P"], big)
    left = set(r.keys("{inferis:0}:r:*")) - before
    assert left and all(0 < r.pttl(k) <= client.ttl_ms for k in left)


def test_modelexecute_on_stored_keys_including_a_large_reference(
    client: Client, workers, r: redis.Redis
) -> None:
    """The colocation case: a big reference tensor already lives in Redis."""
    client.modelstore("two", "onnx", models.two_input_model())
    tag = K.partition_tag(0)
    big = np.random.default_rng(1).standard_normal((300, 200))  # 480 KB: above the inline limit
    client.tensorset(f"{tag}:ref", big)
    client.tensorset(f"{tag}:x", np.ones((300, 200)))
    outs = [f"{tag}:sum", f"{tag}:prod"]
    result = client.modelexecute(
        "two", [f"{tag}:x", f"{tag}:ref"], outs, input_names=["A", "B"],
        output_names=["S", "P"],
    )
    assert np.array_equal(client.tensorget(outs[0]), big + 1)
    assert np.array_equal(client.tensorget(outs[1]), big)
    assert np.array_equal(result.outputs["S"], big + 1)  # fetched by key: too big to inline
    positional = client.modelexecute("two", [f"{tag}:x", f"{tag}:ref"], [f"{tag}:first"])
    assert np.array_equal(positional.outputs["S"], big + 1)
    # mixed: one input inline, the other by reference to the stored tensor
    mixed = client.predict("two", {"A": np.zeros((300, 200)), "B": Ref(f"{tag}:ref")})
    assert np.array_equal(mixed["P"], np.zeros((300, 200))) and np.array_equal(mixed["S"], big)
    with pytest.raises(ArgumentError, match="must all carry one partition tag"):
        client.predict("two", {"A": np.zeros((2, 2)), "B": Ref("{elsewhere}:ref")})


def test_raw_redis_commands_without_the_sdk(r: redis.Redis, workers, iris) -> None:
    """What a redis-cli user does: no reply stream, wait on the done list."""
    from hashlib import sha256

    r.fcall(
        "MODELSTORE", 1, "iris", "BACKEND", "onnx", "DIGEST",
        sha256(iris.blob).hexdigest(), "BLOB", iris.blob,
    )
    row = iris.features[100]
    r.fcall("TENSORSET", 1, "{inferis:0}:x", "FLOAT", 1, 4, "VALUES", *[float(v) for v in row])
    reply = r.fcall(
        "MODELRUN", 2, "{inferis:0}:requests", "{inferis:0}:x", "MODEL", "iris",
        "INPUTS", 1, "TIMEOUT", 5000,
    )
    rid, entry_id, done, prefix = (x.decode() for x in reply)
    assert rid == entry_id and done == f"{{inferis:0}}:r:{rid}:done"
    _, line = r.blpop([done], timeout=20)
    answer = json.loads(line)
    assert answer["status"] == "ok" and answer["version"] == 1
    assert answer["outputs"] == {n: prefix + n for n in ("label", "probabilities")}
    label = r.fcall("TENSORGET", 1, answer["outputs"]["label"], "VALUES")[1]
    assert label == [int(iris.forest.predict(row[None, :])[0])]


def test_submit_keeps_many_requests_in_flight_from_one_thread(
    client: Client, workers, iris
) -> None:
    client.modelstore("iris", "onnx", iris.blob)
    rows = [iris.features[i : i + 1] for i in range(len(iris.features))]
    futures = [client.submit("iris", {"X": row}) for row in rows]
    labels = [int(client.wait(f).raise_for_error().outputs["label"][0]) for f in futures]
    assert labels == iris.forest.predict(iris.features).tolist()


def test_inline_inputs_are_validated_before_enqueue(client: Client, r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="ETENSOR input 1"):
        r.fcall(
            "MODELRUN", 2, "{inferis:0}:requests", "{inferis:0}:in", "MODEL", "m",
            "INPUTS", 1, "DATA", 1, b"junk",
        )
    with pytest.raises(redis.ResponseError, match=r"EINPUT input 1 .* does not exist"):
        r.fcall(
            "MODELRUN", 2, "{inferis:0}:requests", "{inferis:0}:nothing", "MODEL", "m",
            "INPUTS", 1,
        )
    with pytest.raises(redis.ResponseError, match="EARGS MODELRUN declares 2 tensor keys"):
        r.fcall(
            "MODELRUN", 3, "{inferis:0}:requests", "{inferis:0}:a", "{inferis:0}:b",
            "MODEL", "m", "INPUTS", 1,
        )
    with pytest.raises(redis.ResponseError, match=r"EARGS REPLYTO .* must share the hash tag"):
        r.fcall(
            "MODELRUN", 1, "{inferis:0}:requests", "MODEL", "m", "INPUTS", 0,
            "REPLYTO", "{other}:replies",
        )
    with pytest.raises(redis.ResponseError, match=r"EARGS key \{inferis:1\}:x must share the hash"):
        r.fcall(
            "MODELRUN", 2, "{inferis:0}:requests", "{inferis:1}:x", "MODEL", "m", "INPUTS", 1,
        )
    assert r.xlen(K.request_stream(0)) == 0 and r.exists("{inferis:0}:in") == 0
