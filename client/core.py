"""The transport-free core shared by the sync and asyncio clients.

It builds the FCALL arguments of each operation and parses what comes back;
the clients only move bytes. Nothing here performs I/O.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from redis.exceptions import ResponseError

from . import keys
from .errors import (
    ArgumentError,
    DigestError,
    InferisError,
    ReplicationError,
    error_from_code,
    error_from_reply,
)
from .tensor import decode_tensor, encode_tensor

DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_TTL_MS = 3_600_000
# Model blobs above this size are uploaded in chunks (MODELCHUNK), so no single
# command carries hundreds of megabytes.
CHUNK_SIZE = 16 * 1024 * 1024
# How long after the deadline a caller still waits for a worker's own
# deadline error before giving up locally.
REPLY_GRACE_S = 0.5

Inputs = Mapping[str, Any] | Sequence[Any]
READ_ONLY_FUNCTIONS = frozenset({"TENSORGET", "MODELGET", "INFERIS_VERSION"})


def replication_error(acked: int, wanted: int, timeout_ms: int) -> ReplicationError:
    return ReplicationError(
        f"written on the primary but acknowledged by {acked} of {wanted} replica(s) within "
        f"{timeout_ms} ms; it may be lost if the primary fails now"
    )


@dataclass(frozen=True)
class Command:
    """One FCALL: function name, keys and arguments."""

    function: str
    keys: list[str]
    args: list[Any]

    def as_args(self) -> list[Any]:
        return ["FCALL", self.function, len(self.keys), *self.keys, *self.args]

    @property
    def writes(self) -> bool:
        return self.function not in READ_ONLY_FUNCTIONS


@dataclass(frozen=True)
class Ref:
    """An input already stored in Redis, passed by key instead of by value.

    The key must carry the partition's hash tag (``{inferis:0}:...``) so the
    request stays in one slot.
    """

    key: str


@dataclass(frozen=True)
class Enqueued:
    rid: str
    entry_id: str
    reply_key: str
    output_keys: list[str]


@dataclass
class RunResult:
    """The answer to one run: output tensors by name, or an error."""

    rid: str
    model: str = ""
    version: int = 0
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    output_keys: dict[str, str] = field(default_factory=dict)
    error: InferisError | None = None
    timing_us: dict[str, int] = field(default_factory=dict)
    batch_size: int = 1  # how many requests the worker ran together with this one
    missing: list[str] = field(default_factory=list)

    def raise_for_error(self) -> RunResult:
        if self.error is not None:
            raise self.error
        return self


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of one stored model version."""

    name: str
    version: int
    digest: str
    backend: str
    format: str
    device: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    batching: dict[str, Any]
    tags: dict[str, str]
    extra: dict[str, Any]
    created_ms: int
    size: int
    chunks: int


@dataclass(frozen=True)
class StoredVersion:
    name: str
    version: int
    digest: str
    created: bool


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def translate_error(exc: Exception) -> Exception:
    """Map a Redis error reply carrying an inferis code to its exception."""
    if isinstance(exc, ResponseError):
        mapped = error_from_reply(str(exc))
        if mapped is not None:
            return mapped
    return exc


class RequestIds:
    """Request ids unique per client: ``<client id>.<counter>``."""

    def __init__(self) -> None:
        self.client_id = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.client_id}.{next(self._counter)}"


def normalise_inputs(inputs: Inputs) -> list[tuple[str, Any]]:
    """Inputs as (name, array) pairs; a sequence binds by position (name "")."""
    if isinstance(inputs, Mapping):
        return [(str(k), v) for k, v in inputs.items()]
    if isinstance(inputs, np.ndarray):
        return [("", inputs)]
    return [("", v) for v in inputs]


def build_predict(
    *,
    rid: str,
    partition: int,
    reply_key: str,
    model: str,
    inputs: Inputs,
    version: int | str | None,
    timeout_ms: int,
    ttl_ms: int,
    keep_keys: bool = False,
) -> Command:
    """MODELRUN with inline inputs (or :class:`Ref` to stored tensors); the model
    decides the outputs. Unless ``keep_keys``, small tensors travel only in the
    stream entry and the reply (EPHEMERAL): a prediction leaves nothing behind."""
    pairs = normalise_inputs(inputs)
    in_keys = [
        value.key if isinstance(value, Ref) else keys.request_key(partition, rid, f"in:{i}")
        for i, (_, value) in enumerate(pairs)
    ]
    args: list[Any] = ["MODEL", model, "INPUTS", len(pairs), "OUTPUTS", 0]
    if any(name for name, _ in pairs):
        args += ["INNAMES", *[name for name, _ in pairs]]
    for i, (_, value) in enumerate(pairs, start=1):
        if isinstance(value, Ref):
            continue  # the worker reads the stored tensor (colocated: same hash tag)
        args += ["DATA", i, value if isinstance(value, bytes) else encode_tensor(value)]
    args += _run_options(rid, reply_key, version, timeout_ms, ttl_ms)
    if not keep_keys:
        args.append("EPHEMERAL")
    return Command("MODELRUN", [keys.request_stream(partition), *in_keys], args)


def build_execute(
    *,
    rid: str,
    partition: int,
    reply_key: str,
    model: str,
    input_keys: Sequence[str],
    output_keys: Sequence[str],
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    version: int | str | None,
    timeout_ms: int,
    ttl_ms: int,
) -> Command:
    """MODELRUN over tensor keys that already exist (RedisAI's MODELEXECUTE)."""
    args: list[Any] = ["MODEL", model, "INPUTS", len(input_keys), "OUTPUTS", len(output_keys)]
    if input_names:
        args += ["INNAMES", *input_names]
    if output_names:
        args += ["OUTNAMES", *output_names]
    args += _run_options(rid, reply_key, version, timeout_ms, ttl_ms)
    stream = keys.request_stream(partition)
    return Command("MODELRUN", [stream, *input_keys, *output_keys], args)


def _run_options(
    rid: str, reply_key: str, version: int | str | None, timeout_ms: int, ttl_ms: int
) -> list[Any]:
    args: list[Any] = ["TIMEOUT", int(timeout_ms), "TTL", int(ttl_ms), "REPLYTO", reply_key]
    args += ["ID", rid]
    if version is not None:
        args += ["VERSION", str(version)]
    return args


def parse_enqueued(reply: Sequence[Any]) -> Enqueued:
    rid, entry_id, reply_key, *outs = (_text(x) for x in reply)
    return Enqueued(rid, entry_id, reply_key, outs)


def parse_run_reply(payload: bytes) -> RunResult:
    """Decode a worker's reply (msgpack, see docs/PROTOCOL.md) into a RunResult.

    Outputs that came inline are decoded; those too large to inline are listed
    in ``missing`` so the client fetches their keys.
    """
    msg = msgpack.unpackb(payload, raw=False)
    result = RunResult(rid=msg["rid"], model=msg.get("model", ""), version=msg.get("version", 0))
    timing = dict(msg.get("timing", {}))
    result.batch_size = int(timing.pop("batch", 1))
    result.timing_us = timing
    if not msg.get("ok"):
        result.error = error_from_code(msg.get("code", "EINFERIS"), msg.get("error", ""))
        return result
    for name, key, inline in msg.get("outputs", []):
        if key is not None:  # None: an ephemeral output that was not kept as a key
            result.output_keys[name] = key
        if inline is None:
            result.missing.append(name)
        else:
            result.outputs[name] = decode_tensor(inline)
    return result


def fill_missing(result: RunResult, values: Sequence[bytes | None]) -> RunResult:
    """Attach the fetched values of ``result.missing`` (in that order)."""
    for name, value in zip(result.missing, values, strict=True):
        if value is None:
            result.error = InferisError(f"output {name} expired before it was read")
            return result
        result.outputs[name] = decode_tensor(value)
    result.missing = []
    return result


def sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _spec_args(word: str, specs: Sequence[Mapping[str, Any]] | None) -> list[Any]:
    out: list[Any] = []
    for spec in specs or []:
        shape = ",".join("?" if d is None or d < 0 else str(d) for d in spec.get("shape", []))
        out += [word, spec["name"], spec["dtype"], shape or "scalar"]
    return out


def build_modelstore(
    name: str,
    backend: str,
    blob: bytes,
    *,
    device: str = "CPU",
    format: str = "",
    inputs: Sequence[Mapping[str, Any]] | None = None,
    outputs: Sequence[Mapping[str, Any]] | None = None,
    batch: tuple[int, int] | tuple[int, int, Sequence[int]] | None = None,
    tags: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> list[Command]:
    """The commands that store one version: chunk uploads, then the commit."""
    if not keys.is_model_name(name):
        raise ArgumentError(f"model name {name!r} must be 1-128 of letters, digits, _ . -")
    if not blob:
        raise ArgumentError("model blob is empty")
    digest = sha256_hex(blob)
    args: list[Any] = ["BACKEND", backend, "DIGEST", digest, "DEVICE", device]
    if format:
        args += ["FORMAT", format]
    args += _spec_args("INPUT", inputs) + _spec_args("OUTPUT", outputs)
    if batch is not None:
        args += ["BATCH", int(batch[0]), int(batch[1])]
        if len(batch) > 2:
            args += ["PREFERRED", ",".join(str(int(n)) for n in batch[2])]  # type: ignore[misc]
    for k, v in (tags or {}).items():
        args += ["TAG", k, v]
    if extra:
        args += ["META", json.dumps(dict(extra))]
    commands: list[Command] = []
    if len(blob) <= chunk_size:
        args += ["BLOB", blob]
    else:
        view = memoryview(blob)
        count = 0
        for index, start in enumerate(range(0, len(blob), chunk_size)):
            chunk = bytes(view[start : start + chunk_size])
            commands.append(
                Command("MODELCHUNK", [name], ["DIGEST", digest, "INDEX", index, "BLOB", chunk])
            )
            count += 1
        args += ["CHUNKS", count]
    commands.append(Command("MODELSTORE", [name], args))
    return commands


def verify_blob(info: ModelInfo, blob: bytes) -> None:
    """Refuse a blob whose SHA-256 is not the digest its version was stored under."""
    if sha256_hex(blob) != info.digest:
        raise DigestError(
            f"model {info.name} version {info.version} blob does not match its digest"
        )


def model_name_of(model_key: bytes | str) -> str:
    """The model name inside a ``inferis:{<name>}:...`` key."""
    text = _text(model_key)
    return text[text.index("{") + 1 : text.rindex("}")]


def pipeline_blob(
    inputs: Sequence[str], outputs: Sequence[str], steps: Sequence[Mapping[str, Any]]
) -> bytes:
    """Canonical JSON of a pipeline, so the same pipeline always has the same digest."""
    doc = {"inputs": list(inputs), "outputs": list(outputs), "steps": list(steps)}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse_stored(name: str, reply: Sequence[Any]) -> StoredVersion:
    return StoredVersion(name, int(reply[0]), _text(reply[1]), bool(int(reply[2])))


def parse_model_info(reply: Sequence[Any]) -> tuple[ModelInfo, bytes | None]:
    """Parse MODELGET's flat field/value reply; the blob if it was asked for."""
    it = iter(reply)
    raw = {_text(k): v for k, v in zip(it, it, strict=True)}
    blob = raw.pop("blob", None)
    f = {k: _text(v) for k, v in raw.items()}
    info = ModelInfo(
        name=f["name"],
        version=int(f["version"]),
        digest=f["digest"],
        backend=f["backend"],
        format=f.get("format", ""),
        device=f.get("device", "CPU"),
        inputs=_specs(f.get("inputs")),
        outputs=_specs(f.get("outputs")),
        batching=_json_map(f.get("batching")),
        tags=_json_map(f.get("tags")),
        extra=_json_map(f.get("extra")),
        created_ms=int(f.get("created_ms", 0)),
        size=int(f.get("size", 0)),
        chunks=int(f.get("chunks", 1)),
    )
    return info, blob


def _json_list(text: str | None) -> list[Any]:
    value = json.loads(text) if text else []
    return value if isinstance(value, list) else []  # Lua's cjson writes {} for []


def _specs(text: str | None) -> list[dict[str, Any]]:
    specs = _json_list(text)
    for spec in specs:
        if not isinstance(spec.get("shape"), list):  # a scalar's [] arrives as {}
            spec["shape"] = []
    return specs


def _json_map(text: str | None) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {}
