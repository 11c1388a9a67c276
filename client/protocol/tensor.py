"""The tensor value format: a small msgpack header, then raw little-endian bytes.

Layout (documented byte for byte in docs/PROTOCOL.md)::

    0   4  magic b"INFT"
    4   1  format version (1)
    5   1  reserved, 0
    6   2  header length H, uint16 little-endian
    8   H  msgpack array [dtype: str, shape: array of non-negative ints]
    8+H    zero padding up to the next multiple of 16 (the data offset)
    ...    C-order little-endian element bytes (for "str": a msgpack array of
           UTF-8 strings, flattened in C order)

The data starts 16-byte aligned so decoding is a zero-copy ``numpy.frombuffer``.
"""

from __future__ import annotations

import functools
import struct
from typing import Any

import msgpack
import numpy as np

from .defaults import MAX_RANK, MAX_TENSOR_BYTES
from .errors import TensorError

MAGIC = b"INFT"
FORMAT_VERSION = 1
PREFIX_SIZE = 8
DATA_ALIGNMENT = 16

_PREFIX = struct.Struct("<4sBBH")

# Canonical dtype names on the wire -> numpy dtype (little-endian).
_NUMERIC: dict[str, np.dtype] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "uint64": np.dtype("<u8"),
    "bool": np.dtype("?"),
}
STRING_DTYPE = "str"
BFLOAT16 = "bfloat16"


def _bfloat16() -> np.dtype | None:
    # bfloat16 is not a numpy type; ml_dtypes (shipped with onnx/TF/JAX) adds it.
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def dtype_names() -> list[str]:
    """Every dtype name the format knows."""
    return [*_NUMERIC, BFLOAT16, STRING_DTYPE]


def numpy_dtype(name: str) -> np.dtype:
    """Map a wire dtype name to a numpy dtype, or raise TensorError."""
    if name in _NUMERIC:
        return _NUMERIC[name]
    if name == BFLOAT16:
        dt = _bfloat16()
        if dt is None:
            raise TensorError("bfloat16 tensors need the 'ml_dtypes' package")
        return dt
    if name == STRING_DTYPE:
        return np.dtype(object)
    raise TensorError(f"unknown dtype {name!r}; known: {', '.join(dtype_names())}")


# dtype -> wire name for the common cases: dtype.name is slow on a hot path.
_WIRE_NAMES: dict[np.dtype, str] = {dt: name for name, dt in _NUMERIC.items()}
_WIRE_NAMES.update({dt.newbyteorder(">"): name for name, dt in _NUMERIC.items()})


def wire_dtype(dtype: np.dtype) -> str:
    """Map a numpy dtype to its wire name, or raise TensorError."""
    known = _WIRE_NAMES.get(dtype)
    if known is not None:
        return known
    if dtype.kind in "USO":
        return STRING_DTYPE
    if dtype.name == "bfloat16":
        return BFLOAT16
    name = dtype.newbyteorder("=").name if dtype.byteorder not in "=|" else dtype.name
    if name in _NUMERIC:
        return name
    raise TensorError(f"dtype {dtype} cannot be stored; supported: {', '.join(dtype_names())}")


def _data_offset(header_len: int) -> int:
    end = PREFIX_SIZE + header_len
    return (end + DATA_ALIGNMENT - 1) // DATA_ALIGNMENT * DATA_ALIGNMENT


def _check_shape(shape: Any) -> tuple[int, ...]:
    """A valid shape: at most MAX_RANK non-negative integers whose non-zero
    dimensions multiply to at most MAX_TENSOR_BYTES elements.

    Zero dimensions do not excuse the others: ``[0, 2**62]`` has no elements
    but no array library can hold it, so it is refused like any oversize shape
    (the Functions library applies the same rule).
    """
    if not isinstance(shape, (list, tuple)):
        raise TensorError("tensor shape must be an array of integers")
    if len(shape) > MAX_RANK:
        raise TensorError(f"tensor rank {len(shape)} exceeds the limit of {MAX_RANK}")
    product = 1
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise TensorError(f"tensor dimension {dim!r} is not a non-negative integer")
        product *= max(dim, 1)
        if product > MAX_TENSOR_BYTES:
            raise TensorError(
                f"tensor shape {list(shape)} exceeds the limit of {MAX_TENSOR_BYTES} elements"
            )
    return tuple(shape)


def _element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


@functools.lru_cache(maxsize=4096)
def encode_header(dtype_name: str, shape: tuple[int, ...]) -> bytes:
    """The prefix, msgpack header and padding that precede the data bytes.

    Cached: the shape is checked once per distinct shape, not per tensor.
    """
    header = msgpack.packb([dtype_name, list(_check_shape(shape))])
    offset = _data_offset(len(header))
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header))
    return prefix + header + b"\0" * (offset - PREFIX_SIZE - len(header))


def tensor_parts(value: Any) -> tuple[bytes, bytes | memoryview]:
    """The two parts of an array-like's encoding: prefix and header (dtype and shape,
    padded), then the data bytes. Their concatenation is the tensor value."""
    array = value if type(value) is np.ndarray else np.asarray(value)
    dtype_name = wire_dtype(array.dtype)
    header = encode_header(dtype_name, tuple(map(int, array.shape)))
    if dtype_name == STRING_DTYPE:
        items = [_as_text(x) for x in array.reshape(-1).tolist()]
        return header, msgpack.packb(items)
    # Bytes view: memoryview cannot describe extension dtypes such as bfloat16.
    flat = np.ascontiguousarray(array, dtype=numpy_dtype(dtype_name)).reshape(-1)
    return header, flat.view(np.uint8).data


def encode_tensor(value: Any, max_bytes: int = MAX_TENSOR_BYTES) -> bytes:
    """Encode an array-like into the tensor value format."""
    header, data = tensor_parts(value)
    size = len(data) if isinstance(data, bytes) else data.nbytes
    if size > max_bytes:
        raise TensorError(f"tensor of {size} bytes exceeds the limit of {max_bytes} bytes")
    return b"".join((header, data))


def _as_text(item: Any) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8")
    if isinstance(item, str):
        return item
    raise TensorError(f"string tensors hold str or bytes, not {type(item).__name__}")


def parse_header(buf: bytes | memoryview) -> tuple[str, tuple[int, ...], int]:
    """Validate the prefix and header; return (dtype name, shape, data offset)."""
    dtype_name, shape, offset, _ = _header(buf)
    return dtype_name, shape, offset


# Parsed headers by their bytes: a serving path sees the same few shapes again
# and again, and parsing msgpack per tensor is the larger part of a decode.
_HEADERS: dict[bytes, tuple[str, tuple[int, ...], int, np.dtype]] = {}
_MAX_CACHED_HEADERS = 4096


def _header(buf: bytes | memoryview) -> tuple[str, tuple[int, ...], int, np.dtype]:
    if type(buf) is bytes and len(buf) >= PREFIX_SIZE:  # the common case: one lookup
        known = _HEADERS.get(buf[: PREFIX_SIZE + (buf[6] | buf[7] << 8)])
        if known is not None:
            return known
    view = memoryview(buf)
    if len(view) < PREFIX_SIZE:
        raise TensorError("not an inferis tensor: value too short")
    magic, version, _reserved, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise TensorError("not an inferis tensor: bad magic")
    if version != FORMAT_VERSION:
        raise TensorError(f"unsupported tensor format version {version}")
    offset = _data_offset(header_len)
    if len(view) < offset:
        raise TensorError("corrupt tensor: truncated header")
    raw = bytes(view[: PREFIX_SIZE + header_len])  # prefix and header: the cache key
    known = _HEADERS.get(raw)
    if known is not None:
        return known
    try:
        header = msgpack.unpackb(raw[PREFIX_SIZE:], raw=False)
    except Exception as exc:
        raise TensorError(f"corrupt tensor header: {exc}") from None
    if not isinstance(header, list) or len(header) != 2 or not isinstance(header[0], str):
        raise TensorError("corrupt tensor header: expected [dtype, shape]")
    dtype_name = header[0]
    parsed = (dtype_name, _check_shape(header[1]), offset, numpy_dtype(dtype_name))
    if len(_HEADERS) >= _MAX_CACHED_HEADERS:
        _HEADERS.clear()
    _HEADERS[raw] = parsed
    return parsed


def decode_tensor(buf: bytes | memoryview, max_bytes: int = MAX_TENSOR_BYTES) -> np.ndarray:
    """Decode a tensor value; numeric data is a zero-copy, read-only view of ``buf``."""
    dtype_name, shape, offset, dtype = _header(buf)
    count = _element_count(shape)
    payload = len(buf) - offset
    if dtype_name == STRING_DTYPE:
        try:
            items = msgpack.unpackb(memoryview(buf)[offset:], raw=False)
        except Exception as exc:
            raise TensorError(f"corrupt string tensor data: {exc}") from None
        if not isinstance(items, list) or len(items) != count:
            raise TensorError(f"string tensor holds {_len(items)} items, its shape needs {count}")
        if not all(isinstance(x, str) for x in items):
            raise TensorError("string tensor items must all be strings")
        out = np.empty(count, dtype=object)
        out[:] = items
        return out.reshape(shape)
    expected = count * dtype.itemsize
    if expected > max_bytes:
        raise TensorError(f"tensor of {expected} bytes exceeds the limit of {max_bytes} bytes")
    if payload != expected:
        raise TensorError(
            f"corrupt tensor: {dtype_name}{list(shape)} needs {expected} data bytes, got {payload}"
        )
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)


def _len(items: Any) -> int:
    return len(items) if isinstance(items, list) else -1
