"""The prediction cache's protocol, without Redis: keys, precedence, entry values."""

from __future__ import annotations

import numpy as np
import pytest

from inferis.client import ArgumentError, encode_tensor
from inferis.client.protocol import caching, keys
from inferis.client.protocol.caching import CachePolicy, CacheSettings


def test_the_inputs_hash_covers_names_dtypes_shapes_bytes_and_outputs() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = caching.inputs_hash({"x": x, "y": x}, ["out"])
    assert len(base) == 32 and base == caching.inputs_hash({"y": x.copy(), "x": x}, ["out"])
    assert base == caching.inputs_hash({"x": np.asfortranarray(x), "y": x}, ["out"])
    different = [
        caching.inputs_hash({"x": x, "y": x}, ["other"]),
        caching.inputs_hash({"x": x, "y": x}, []),
        caching.inputs_hash({"x": x, "z": x}, ["out"]),
        caching.inputs_hash({"x": x.reshape(3, 2), "y": x}, ["out"]),
        caching.inputs_hash({"x": x.view(np.int32), "y": x}, ["out"]),  # same bytes
        caching.inputs_hash({"x": x + 1, "y": x}, ["out"]),
    ]
    assert len({base, *different}) == 7
    words = np.array([["a", "b"]], dtype=object)
    assert caching.inputs_hash({"w": words}, []) != caching.inputs_hash(
        {"w": np.array([["a", "c"]], dtype=object)}, [])


def test_the_most_specific_setting_wins() -> None:
    version = CachePolicy(1000, 5)
    fields = {"ttl_ms": "0", "alias:prod:ttl_ms": "2000", "alias:prod:max_entries": "7",
              "alias:bad:ttl_ms": "soon"}
    settings = CacheSettings.parse(fields)
    assert settings.model == CachePolicy(0) and not settings.model.enabled
    assert settings.aliases == {"prod": CachePolicy(2000, 7)}  # the unreadable one is no setting
    assert settings.effective("prod", version) == CachePolicy(2000, 7)
    assert settings.effective("other", version) == CachePolicy(0)
    assert CacheSettings.parse({}).effective("prod", version) == version
    assert CacheSettings.parse({}).effective(None, None) is None


def test_settings_fields_round_trip_and_the_key_names() -> None:
    policy = CachePolicy(60_000, 100)
    flat = caching.settings_fields(policy, "canary")
    parsed = CacheSettings.parse({str(k): str(v) for k, v in zip(flat[::2], flat[1::2],
                                                                  strict=True)})
    assert parsed.aliases == {"canary": policy} and parsed.model is None
    assert caching.unset_fields() == ["ttl_ms", "max_entries"]
    assert keys.cache_settings("iris") == "inferis:{iris}:cache"
    key = keys.prediction_key("{inferis:3}", "iris", "d:h")
    assert key == "{inferis:3}:cache:iris:d:h" and keys.slot_of(key) == keys.slot_of(
        keys.request_stream(3))


def test_a_versions_meta_setting_is_checked_when_stored() -> None:
    assert caching.meta_with_policy({"entry": "f"}, 500, None) == {
        "entry": "f", "cache": {"ttl_ms": 500, "max_entries": 10_000}}
    assert caching.policy_of_meta({"cache": {"ttl_ms": 500}}) == CachePolicy(500)
    assert caching.policy_of_meta({"cache": {"ttl_ms": "x"}}) is None
    with pytest.raises(ArgumentError, match="needs cache_ttl_ms"):
        caching.meta_with_policy(None, None, 10)
    with pytest.raises(ArgumentError, match="max_entries"):
        caching.meta_with_policy(None, 10, 0)
    with pytest.raises(ArgumentError, match="ttl_ms"):
        caching.meta_with_policy(None, -1, None)


def test_an_entry_is_an_answer_only_for_exactly_the_outputs_asked() -> None:
    outputs = [("label", encode_tensor(np.array([1]))), ("p", encode_tensor(np.ones(2)))]
    value = caching.pack_answer(outputs)
    assert caching.unpack_answer(value, ["label", "p"]) == outputs
    assert caching.unpack_answer(value, ["p", "label"]) is None
    assert caching.unpack_answer(value, ["label"]) is None
    assert caching.unpack_answer(b"not msgpack \xc1", ["label", "p"]) is None
