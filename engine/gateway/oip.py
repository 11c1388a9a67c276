"""Open Inference Protocol V2 tensors: JSON data and the binary tensor extension,
to and from numpy. No I/O.

Binary extension: a request whose ``Inference-Header-Content-Length`` header is
N has N bytes of JSON, then the raw bytes of every input whose parameters say
``binary_data_size``, in the order of ``inputs``; an answer is built the same
way for outputs asked with ``binary_data: true``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferis.client.protocol.defaults import MAX_RANK, MAX_TENSOR_BYTES
from inferis.client.protocol.errors import ArgumentError

HEADER_LENGTH = "Inference-Header-Content-Length"

# OIP datatype <-> numpy (BYTES, strings, is not served).
_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_NAMES = {dt: name for name, dt in _DTYPES.items()}
# inferis wire dtype names -> OIP (model metadata)
WIRE_TO_OIP = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
    "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "bfloat16": "BF16", "str": "BYTES",
}


def oip_datatype(array: np.ndarray) -> str:
    name = _NAMES.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else
                      array.dtype)
    if name is None:
        raise ArgumentError(f"dtype {array.dtype} has no Open Inference Protocol datatype")
    return name


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    binary_outputs: set[str] = field(default_factory=set)
    requested: list[str] = field(default_factory=list)  # empty: every output
    binary_default: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request body (JSON, or JSON plus binary tensors)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ArgumentError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}"
                                ) from None
        if not 0 <= n <= len(body):
            raise ArgumentError(f"{HEADER_LENGTH} {n} is beyond the body ({len(body)} bytes)")
        head, rest = body[:n], memoryview(body)[n:]
    else:
        head, rest = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"the request is not JSON: {exc}") from None
    except RecursionError:
        raise ArgumentError("the request's JSON is nested too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise ArgumentError("an infer request is a JSON object with an inputs list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in doc["inputs"]:
        name, array, used = _input(item, rest, offset)
        offset += used
        if name in inputs:
            raise ArgumentError(f"input {name!r} appears twice")
        inputs[name] = array
    if offset != len(rest):
        raise ArgumentError(f"{len(rest) - offset} bytes of binary data belong to no input")
    params = _parameters(doc.get("parameters"), "the request's")
    request = InferRequest(_request_id(doc.get("id")), inputs, parameters=params,
                           binary_default=bool(params.get("binary_data_output", False)))
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise ArgumentError("outputs must be a list")
    for out in outputs:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise ArgumentError("each requested output is an object with a name")
        request.requested.append(out["name"])
        if _parameters(out.get("parameters"), f"output {out['name']}").get(
                "binary_data", request.binary_default):
            request.binary_outputs.add(out["name"])
    return request


def _parameters(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ArgumentError(f"{what} parameters must be an object")
    return value


def _shape(name: str, shape: Any) -> list[int]:
    """The protocol's shape rule (client/protocol/tensor.py), checked before numpy
    sees it: numpy wraps int64 products silently and refuses ranks over 64."""
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ArgumentError(f"input {name}: shape must be a list of non-negative integers")
    if len(shape) > MAX_RANK:
        raise ArgumentError(f"input {name}: rank {len(shape)} exceeds the limit of {MAX_RANK}")
    if math.prod(max(d, 1) for d in shape) > MAX_TENSOR_BYTES:
        raise ArgumentError(f"input {name}: shape {shape} exceeds the limit of "
                            f"{MAX_TENSOR_BYTES} elements")
    return shape


def _request_id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ArgumentError("id must be a string")
    return value


def _input(item: Any, rest: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(item, dict):
        raise ArgumentError("each input is an object with name, shape, datatype and data")
    name, datatype = item.get("name"), item.get("datatype")
    if not isinstance(name, str) or not name:
        raise ArgumentError("an input has no name")
    shape = _shape(name, item.get("shape"))
    dtype = _DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise ArgumentError(f"input {name}: datatype {datatype!r} is not served "
                            f"(one of {', '.join(_DTYPES)})")
    count = math.prod(shape)
    size = _parameters(item.get("parameters"), f"input {name}").get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size != count * dtype.itemsize:
            raise ArgumentError(f"input {name}: binary_data_size {size} does not match shape "
                                f"{shape} of {datatype} ({count * dtype.itemsize} bytes)")
        if offset + size > len(rest):
            raise ArgumentError(f"input {name}: the body ends before its {size} bytes")
        array = np.frombuffer(rest[offset : offset + size], dtype=dtype).reshape(shape)
        return name, array, size
    data = item.get("data")
    if data is None:
        raise ArgumentError(f"input {name} has neither data nor binary_data_size")
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        # OverflowError: an integer out of the datatype's range
        raise ArgumentError(f"input {name}: data does not fit {datatype}: {exc}") from None
    if array.size != count:
        raise ArgumentError(f"input {name}: {array.size} values for shape {shape}")
    return name, array.reshape(shape), 0


def encode_response(model: str, version: int, request_id: str,
                    outputs: dict[str, np.ndarray], request: InferRequest,
                    extra: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The answer body and its headers (binary outputs after the JSON header)."""
    names = request.requested or list(outputs)
    items, blobs = [], []
    for name in names:
        if name not in outputs:
            raise ArgumentError(f"model {model} has no output {name!r}; outputs: {list(outputs)}")
        array = np.ascontiguousarray(outputs[name])
        item: dict[str, Any] = {"name": name, "datatype": oip_datatype(array),
                                "shape": list(array.shape)}
        if name in request.binary_outputs or (request.binary_default and not request.requested):
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            item["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            item["data"] = array.reshape(-1).tolist()
        items.append(item)
    doc = {"model_name": model, "model_version": str(version), "id": request_id,
           "parameters": extra, "outputs": items}
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    HEADER_LENGTH: str(len(head))}
