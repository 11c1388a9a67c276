"""The tensor value format: exact round trips, zero-copy decode, clear refusals."""

from __future__ import annotations

import contextlib
import struct

import ml_dtypes
import msgpack
import numpy as np
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from inferis.client import TensorError, decode_tensor, encode_tensor
from inferis.client.protocol.tensor import MAX_RANK, encode_header

NUMERIC = [
    "float16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool",
]
SHAPES = [(), (0,), (3, 0, 2), (1,), (2, 3), (2, 3, 4, 1), (1,) * MAX_RANK]


def _sample(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(size=shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("shape", SHAPES)
def test_numeric_round_trip_is_exact(dtype: str, shape: tuple[int, ...], rng) -> None:
    value = _sample(dtype, shape, rng)
    decoded = decode_tensor(encode_tensor(value))
    assert decoded.dtype == value.dtype
    assert decoded.shape == value.shape
    assert decoded.tobytes() == value.tobytes()


def test_bfloat16_and_strings_round_trip() -> None:
    bf = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=ml_dtypes.bfloat16)
    out = decode_tensor(encode_tensor(bf))
    assert out.dtype == bf.dtype and out.tobytes() == bf.tobytes()
    text = np.array([["héllo", ""], ["∑ unicode", "x" * 300]], dtype=object)
    out = decode_tensor(encode_tensor(text))
    assert out.shape == (2, 2) and out.tolist() == text.tolist()
    assert decode_tensor(encode_tensor(np.array([], dtype=object))).shape == (0,)


def test_large_tensor_round_trip(rng) -> None:
    value = rng.standard_normal((512, 1024)).astype(np.float32)  # 2 MiB
    assert np.array_equal(decode_tensor(encode_tensor(value)), value)


def test_decode_is_zero_copy_and_aligned() -> None:
    blob = encode_tensor(np.arange(12, dtype=np.float64).reshape(3, 4))
    array = decode_tensor(blob)
    assert not array.flags.owndata
    assert not array.flags.writeable  # a view of the immutable bytes
    assert array.base is not None
    data_offset = array.__array_interface__["data"][0] - np.frombuffer(blob, np.uint8).ctypes.data
    assert data_offset % 16 == 0
    assert array.flags.aligned


def test_non_contiguous_and_big_endian_inputs_are_normalised() -> None:
    base = np.arange(20, dtype=">i4").reshape(4, 5)
    view = base[:, ::2].T
    out = decode_tensor(encode_tensor(view))
    assert out.dtype == np.dtype("<i4")
    assert np.array_equal(out, view)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "too short"),
        (b"NOPE" + b"\0" * 20, "bad magic"),
        (b"INFT\x02\x00\x00\x00", "format version"),
        (b"INFT\x01\x00\xff\x00" + b"\0" * 8, "truncated header"),
        (struct.pack("<4sBBH", b"INFT", 1, 0, 3) + b"\xc1\xc1\xc1" + b"\0" * 5, "corrupt"),
        (encode_header("float32", (2, 2)) + b"\0" * 15, "needs 16 data bytes, got 15"),
        (encode_header("float32", (2,)) + b"\0" * 9, "got 9"),
        (encode_header("complex", (1,)) + b"\0" * 8, "unknown dtype"),
    ],
)
def test_malformed_values_are_refused(blob: bytes, message: str) -> None:
    with pytest.raises(TensorError, match=message):
        decode_tensor(blob)


def test_negative_and_oversized_shapes_are_refused() -> None:
    header = msgpack.packb(["float32", [-1, 4]])
    blob = struct.pack("<4sBBH", b"INFT", 1, 0, len(header)) + header
    blob += b"\0" * ((-len(blob)) % 16)
    with pytest.raises(TensorError, match="not a non-negative integer"):
        decode_tensor(blob)
    with pytest.raises(TensorError, match="rank 9 exceeds"):
        encode_tensor(np.zeros((1,) * 9))
    with pytest.raises(TensorError, match="exceeds the limit"):
        encode_tensor(np.zeros(1000, dtype=np.uint8), max_bytes=999)
    for dims in ([2**31, 2**31], [0, 2**62], [2**29, 0]):  # zero elements do not excuse a dim
        header = msgpack.packb(["float64", dims])
        crafted = struct.pack("<4sBBH", b"INFT", 1, 0, len(header)) + header
        crafted += b"\0" * ((-len(crafted)) % 16)
        with pytest.raises(TensorError, match="exceeds the limit"):
            decode_tensor(crafted)
    with pytest.raises(TensorError, match="exceeds the limit"):
        encode_header("float64", (2**31, 2**31))


def test_unsupported_dtypes_are_refused() -> None:
    with pytest.raises(TensorError, match="cannot be stored"):
        encode_tensor(np.zeros(2, dtype=np.complex64))


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.int16, np.bool_]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_round_trip_property(value: np.ndarray) -> None:
    out = decode_tensor(encode_tensor(value))
    assert out.shape == value.shape and out.tobytes() == value.tobytes()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(blob: bytes) -> None:
    with contextlib.suppress(TensorError):  # refusing is fine; any other exception is not
        decode_tensor(blob)


# ---------------------------------------------------------------- the Lua side


@pytest.mark.parametrize("dtype", NUMERIC)
def test_python_and_lua_agree_on_every_dtype(r: redis.Redis, dtype: str, rng) -> None:
    value = _sample(dtype, (2, 3), rng)
    r.fcall("TENSORSET", 1, "t", "RAW", encode_tensor(value))
    meta = r.fcall("TENSORGET", 1, "t", "META", "BLOB")
    assert meta[1].decode() == dtype and meta[3] == [2, 3]
    assert meta[5] == value.tobytes()
    # Lua builds the header itself from dtype, shape and BLOB
    r.fcall("TENSORSET", 1, "u", dtype, 2, 3, "BLOB", value.tobytes())
    assert decode_tensor(r.get("u")).tobytes() == value.tobytes()


def test_lua_values_round_trip(r: redis.Redis) -> None:
    r.fcall("TENSORSET", 1, "f", "FLOAT", 2, 2, "VALUES", 1, 2.5, -3, "1e-3")
    assert np.array_equal(decode_tensor(r.get("f")), np.array([[1, 2.5], [-3, 1e-3]], np.float32))
    reply = r.fcall("TENSORGET", 1, "f", "VALUES")
    assert [float(v) for v in reply[1]] == [1.0, 2.5, -3.0, pytest.approx(1e-3)]
    r.fcall("TENSORSET", 1, "i", "INT64", 3, "VALUES", -5, 0, 9007199254740991)
    assert decode_tensor(r.get("i")).tolist() == [-5, 0, 9007199254740991]
    r.fcall("TENSORSET", 1, "b", "bool", 3, "VALUES", "true", 0, 1)
    assert decode_tensor(r.get("b")).tolist() == [True, False, True]
    r.fcall("TENSORSET", 1, "s", "STRING", 2, "VALUES", "héllo", "wörld")
    assert decode_tensor(r.get("s")).tolist() == ["héllo", "wörld"]
    r.fcall("TENSORSET", 1, "z", "float32", 0)
    assert decode_tensor(r.get("z")).shape == (0,)
    r.fcall("TENSORSET", 1, "scalar", "float64", "VALUES", 4.5)
    assert decode_tensor(r.get("scalar")).shape == ()
    r.set("h", encode_tensor(np.array([0.5, -2, 65504], dtype=np.float16)))
    assert r.fcall("TENSORGET", 1, "h", "VALUES")[1] == [b"0.5", b"-2", b"65504"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["complex64", 2], "ETENSOR unknown dtype"),
        (["float32", 2, "VALUES", 1], "ETENSOR VALUES has 1 items, the shape needs 2"),
        (["float32", -2], "EARGS dimension out of range"),
        (["float32", *([1] * 9)], "ETENSOR tensor rank 9 exceeds"),
        (["float32", 2, "BLOB", "abc"], "ETENSOR value: float32 shape needs 8 data bytes"),
        (["int8", 1, "VALUES", "1.5"], "ETENSOR VALUES item 1 is not an integer"),
        (["float16", 1, "VALUES", "1"], "ETENSOR VALUES is not supported for float16"),
        (["float32", 65536, 65536, 65536], "ETENSOR tensor shape exceeds the limit"),
        (["float32", 0, 2**28 + 1], "ETENSOR tensor shape exceeds the limit"),
        (["float32", 0, 2**62], "EARGS dimension must be a decimal integer"),
        (["float32", 0, "1e309"], "EARGS dimension must be a decimal integer"),
        (["float32", "inf"], "EARGS dimension must be a decimal integer"),
        (["float32", "0x10"], "EARGS dimension must be a decimal integer"),
        (["float32", 16384, 16384], "ETENSOR a float32 tensor of 268435456 elements exceeds"),
        (["RAW", "garbage"], "ETENSOR value is not an inferis tensor"),
    ],
)
def test_lua_tensorset_refuses_bad_input(r: redis.Redis, args: list, message: str) -> None:
    with pytest.raises(redis.ResponseError, match=message):
        r.fcall("TENSORSET", 1, "bad", *args)
    assert r.exists("bad") == 0


def test_lua_tensorget_errors(r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="ETENSOR tensor key missing does not exist"):
        r.fcall("TENSORGET", 1, "missing", "META")
    r.set("junk", b"not a tensor at all")
    with pytest.raises(redis.ResponseError, match="ETENSOR tensor junk is not an inferis tensor"):
        r.fcall("TENSORGET", 1, "junk", "META")
