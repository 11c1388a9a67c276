"""The FCALL of every Function in lua/inferis.lua, built without I/O.

Each builder returns a :class:`Command`; a client sends it and parses the
reply, a worker does the same for its own internal calls. docs/PROTOCOL.md §4
describes each Function; keep the three in step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import caching, keys
from .defaults import CHUNK_SIZE
from .entries import RunRequest, pack_records
from .errors import ArgumentError
from .models import Batching, TensorSpec

# Functions that write nothing: FCALL_RO-able, and never followed by WAIT.
READ_ONLY = frozenset({"TENSORGET", "MODELGET", "INFERIS_VERSION", "MODELALIASGET",
                       "MODELQUALITY", "MODELDRIFT", "MODELAUDIT"})


@dataclass(frozen=True, slots=True)
class Command:
    """One FCALL: function name, keys and arguments."""

    function: str
    keys: list[str]
    args: list[Any]

    def as_args(self) -> list[Any]:
        # FCALL_RO for the no-writes Functions: it needs only read access to KEYS
        # (an ACL %R~ pattern), and may go to a replica.
        call = "FCALL" if self.writes else "FCALL_RO"
        return [call, self.function, len(self.keys), *self.keys, *self.args]

    @property
    def writes(self) -> bool:
        return self.function not in READ_ONLY


@dataclass(frozen=True, slots=True)
class Plain:
    """A plain Redis command, for what no Function does: a worker sends its cache
    writes this way, in the same write as the completion they follow."""

    args: tuple[Any, ...]

    def as_args(self) -> list[Any]:
        return list(self.args)


def sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------- tensors


def tensorset(key: str, encoded: bytes) -> Command:
    return Command("TENSORSET", [key], ["RAW", encoded])


def tensorget(key: str) -> Command:
    return Command("TENSORGET", [key], [])


# ---------------------------------------------------------------- models


def _spec_args(word: str, specs: Sequence[TensorSpec | Mapping[str, Any]] | None) -> list[Any]:
    out: list[Any] = []
    for raw in specs or ():
        try:
            spec = TensorSpec.coerce(raw)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ArgumentError(
                f"{word.lower()}s: each spec is a TensorSpec or a mapping with "
                f"'name', 'dtype' and 'shape', got {raw!r}"
            ) from None
        shape = ",".join("?" if d is None else str(d) for d in spec.shape or ())
        out += [word, spec.name, spec.dtype, shape or "scalar"]
    return out


def _region(index: int) -> list[Any]:
    """REGION n: the writer's region in an Active-Active deployment (0: none)."""
    return ["REGION", index] if index else []


def modelstore(
    name: str,
    backend: str,
    blob: bytes,
    *,
    device: str = "CPU",
    format: str = "",
    inputs: Sequence[TensorSpec | Mapping[str, Any]] | None = None,
    outputs: Sequence[TensorSpec | Mapping[str, Any]] | None = None,
    batch: Batching | Sequence[Any] | None = None,
    tags: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    chunk_size: int = CHUNK_SIZE,
    signing_key: Any = None,
    encryption_key: Any = None,
    by: str = "",
    cache_ttl_ms: int | None = None,  # cache its answers (caching.py)
    cache_max_entries: int | None = None,
    region: int = 0,
) -> list[Command]:
    """The commands that store one version: chunk uploads, then the commit.
    ``encryption_key`` (32 bytes or a key file): store the file encrypted
    (client/encryption.py); the digest and the signature are then over the
    ciphertext. ``signing_key`` (an ed25519 private key, its PEM, or a path):
    sign it. ``by``: who stores it, for the audit. ``region``: the writer's region
    index in an Active-Active deployment (docs/ACTIVE-ACTIVE.md)."""
    if not isinstance(name, str) or not keys.is_model_name(name):
        raise ArgumentError(f"model name {name!r} must be 1-128 of letters, digits, _ . -")
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ArgumentError(f"data must be the model file's bytes, not {type(blob).__name__}")
    blob = bytes(blob)
    if not blob:
        raise ArgumentError("model blob is empty")
    if cache_ttl_ms is not None or cache_max_entries is not None:
        extra = caching.meta_with_policy(extra, cache_ttl_ms, cache_max_entries)
    key_id = ""
    if encryption_key is not None:
        from .. import encryption

        key = encryption.load_key(encryption_key)
        blob, key_id = encryption.encrypt(key, blob, backend, format), encryption.key_id(key)
    digest = sha256_hex(blob)
    args: list[Any] = ["BACKEND", backend, "DIGEST", digest, "DEVICE", device]
    if format:
        args += ["FORMAT", format]
    args += _spec_args("INPUT", inputs) + _spec_args("OUTPUT", outputs)
    try:
        batching = Batching.coerce(batch)
    except (TypeError, ValueError):
        raise ArgumentError(
            f"batch must be (max_batch_size, max_queue_delay_us[, preferred sizes]), got {batch!r}"
        ) from None
    if batching is not None:
        args += ["BATCH", batching.max_batch_size, batching.max_queue_delay_us]
        if batching.preferred_sizes:
            args += ["PREFERRED", ",".join(str(n) for n in batching.preferred_sizes)]
    if tags is not None and not isinstance(tags, Mapping):
        raise ArgumentError(f"tags must be a mapping of strings, got {type(tags).__name__}")
    for k, v in (tags or {}).items():
        args += ["TAG", str(k), str(v)]
    if extra:
        if not isinstance(extra, Mapping):
            raise ArgumentError(f"extra must be a mapping, got {type(extra).__name__}")
        args += ["META", json.dumps(dict(extra))]
    if signing_key is not None:
        from .. import signing

        signature, signer = signing.sign(signing_key, digest, backend, format)
        args += ["SIGNATURE", signature, "SIGNER", signer]
    if key_id:
        args += ["ENCRYPTED", key_id]
    if by:
        args += ["BY", by]
    args += _region(region)
    commands: list[Command] = []
    if len(blob) <= chunk_size:
        args += ["BLOB", blob]
    else:
        view = memoryview(blob)
        starts = range(0, len(blob), chunk_size)
        for index, start in enumerate(starts):
            chunk = bytes(view[start : start + chunk_size])
            commands.append(
                Command("MODELCHUNK", [keys.model_base(name)],
                        ["DIGEST", digest, "INDEX", index, "BLOB", chunk])
            )
        args += ["CHUNKS", len(starts)]
    commands.append(Command("MODELSTORE", [keys.model_base(name)], args))
    return commands


def modelget(name: str, version: int | str | None = None, *, blob: bool = False) -> Command:
    args: list[Any] = ["META"]
    if version is not None:
        args += ["VERSION", str(version)]
    if blob:
        args.append("BLOB")
    return Command("MODELGET", [keys.model_base(name)], args)


def modelversions(name: str) -> Command:
    return Command("MODELGET", [keys.model_base(name)], ["VERSIONS"])


def modelexport(name: str, version: int | str | None = None, by: str = "") -> Command:
    """MODELGET ... BLOB that leaves a ``read`` entry in the model's audit."""
    args: list[Any] = [] if version is None else ["VERSION", str(version)]
    return Command("MODELEXPORT", [keys.model_base(name)], [*args, *(["BY", by] if by else [])])


def modeldel(name: str, version: int | str | None = None, by: str = "") -> Command:
    args: list[Any] = [] if version is None else ["VERSION", str(version)]
    return Command("MODELDEL", [keys.model_base(name)], [*args, *(["BY", by] if by else [])])


def audit(name: str, count: int = 100) -> Command:
    return Command("MODELAUDIT", [keys.model_base(name)], ["COUNT", count])


def alias_set(name: str, alias: str, spec: str, *, shadow: int = 0, shadow_ppm: int = 0,
              guard: tuple[int, int, int] | None = None, log_ttl_ms: int | None = None,
              by: str = "", warm: bool = True, region: int = 0) -> Command:
    args: list[Any] = ["SET", alias, spec]
    if shadow:
        args += ["SHADOW", shadow, shadow_ppm]
    if guard is not None:
        args += ["GUARD", *guard]
    if log_ttl_ms is not None:
        args += ["LOGTTL", log_ttl_ms]
    if by:
        args += ["BY", by]
    if not warm:
        args.append("NOWARM")
    return Command("MODELALIAS", [keys.model_base(name)], args + _region(region))


def alias_commit(name: str, alias: str, region: int = 0) -> Command:
    return Command("MODELALIAS", [keys.model_base(name)], ["COMMIT", alias, *_region(region)])


def alias_del(name: str, alias: str, by: str = "", region: int = 0) -> Command:
    return Command("MODELALIAS", [keys.model_base(name)],
                   ["DEL", alias, *(["BY", by] if by else []), *_region(region)])


def alias_get(name: str, alias: str | None = None) -> Command:
    return Command("MODELALIASGET", [keys.model_base(name)], [alias] if alias else [])


def alias_history(name: str, count: int = 100) -> Command:
    return Command("MODELALIASGET", [keys.model_base(name)], ["HISTORY", count])


def feedback(name: str, rid: str, truth: float) -> Command:
    return Command("MODELFEEDBACK", [keys.model_base(name)], [rid, repr(float(truth))])


def quality(name: str) -> Command:
    return Command("MODELQUALITY", [keys.model_base(name)], [])


def drift(name: str, version: int, reference: int | None = None,
          current: int | None = None) -> Command:
    args: list[Any] = [version]
    if reference is not None:
        args += ["REF", reference]
    if current is not None:
        args += ["CUR", current]
    return Command("MODELDRIFT", [keys.model_base(name)], args)


# ---------------------------------------------------------------- worker-internal


def worker_stats(
    model: str, consumer: str, counts: Sequence[Any], region: int = 0
) -> Command:
    """counts: (version, requests, errors, run_us, queue_us) flattened."""
    return Command("_INFERIS_STATS", [keys.model_base(model)], [consumer, region, *counts])


def loaded(model: str, by: str, versions: Sequence[Any]) -> Command:
    """versions: (version, digest) flattened: a worker loaded them (the audit's ``load``)."""
    return Command("_INFERIS_LOADED", [keys.model_base(model)], [by, *versions])


def warmed(model: str, consumer: str, versions: Sequence[int], region: int = 0) -> Command:
    return Command("_INFERIS_WARMED", [keys.model_base(model)], [consumer, region, *versions])


def log_predictions(model: str, ttl_ms: int, records: Sequence[Any]) -> Command:
    """records: (rid, version, kind, pred, proba) flattened."""
    return Command("_INFERIS_LOG", [keys.model_base(model)], [ttl_ms, *records])


def shadow_agreement(model: str, primary: int, shadow: int, compared: int, agreed: int,
                     max_diff: float) -> Command:
    return Command("_INFERIS_SHADOW", [keys.model_base(model)],
                   [primary, shadow, compared, agreed, f"{max_diff:.9g}"])


def drift_edges(model: str, version: int, proposals: Sequence[Any]) -> Command:
    """proposals: (column, lo, hi) flattened."""
    return Command("_INFERIS_EDGES", [keys.model_base(model)], [version, *proposals])


def drift_counts(model: str, version: int, window: int, ttl_ms: int, keep_from: int,
                 counts: Sequence[Any]) -> Command:
    """counts: (column, comma-separated bin counts) flattened."""
    return Command("_INFERIS_DRIFT", [keys.model_base(model)],
                   [version, window, ttl_ms, keep_from, *counts])


def library_version() -> Command:
    return Command("INFERIS_VERSION", [], [])


# ---------------------------------------------------------------- runs


def modelrun(stream: str, reply: str, request: RunRequest) -> Command:
    """One request with every option of MODELRUN: stored inputs, named output keys,
    inputs kept as keys (the form redis-cli users type)."""
    ins, outs = request.inputs, request.outputs
    args: list[Any] = ["MODEL", request.model, "INPUTS", len(ins), "OUTPUTS", len(outs)]
    if any(s.name for s in ins):
        args += ["INNAMES", *[s.name for s in ins]]
    if any(s.name for s in outs):
        args += ["OUTNAMES", *[s.name for s in outs]]
    for position, slot in enumerate(ins, start=1):
        if slot.data is not None:
            args += ["DATA", position, slot.data]
    args += ["TIMEOUT", request.timeout_ms, "TTL", request.ttl_ms, "ID", request.rid]
    if reply:
        args += ["REPLYTO", reply]
    if request.version:
        args += ["VERSION", request.version]
    if request.ephemeral:
        args.append("EPHEMERAL")
    if request.unit:
        args += ["UNIT", request.unit]
    return Command("MODELRUN", [stream, *[s.key for s in ins], *[s.key for s in outs]], args)


def modelrunmany(stream: str, reply: str, requests: Sequence[RunRequest]) -> Command:
    """Many requests of one caller in one call and one stream entry. Inputs travel
    inline or by key (declared, so the Function reads them as the caller);
    outputs come back in the reply."""
    refs = sorted({s.key for r in requests for s in r.inputs if s.data is None})
    return Command(
        "MODELRUNMANY",
        [stream, keys.config_of(stream), reply, *refs],
        [len(requests), pack_records(requests)],
    )


# ---------------------------------------------------------------- workers


@dataclass(frozen=True, slots=True)
class Write:
    """One write of a completion: XADD (``X``), RPUSH (``L``) or SET (``S``) with a TTL."""

    op: str
    key: str
    ttl_ms: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Settlement:
    """How one entry ends: acknowledged with its writes, dead-lettered if ``reason``."""

    entry_id: str
    requests: int
    writes: Sequence[Write]
    reason: str = ""
    deliveries: int = 1


def complete(stream: str, settlements: Sequence[Settlement]) -> Command:
    """``_INFERIS_COMPLETE``: for each entry, acknowledge first and write only if that
    acknowledged something, so a request run twice is answered once."""
    call_keys = [stream, keys.deadletter_of(stream), keys.config_of(stream)]
    args: list[Any] = [len(settlements)]
    for s in settlements:
        args += [s.entry_id, s.requests, s.reason, s.deliveries, len(s.writes)]
        for w in s.writes:
            call_keys.append(w.key)
            args += [w.op, w.ttl_ms, w.value]
    return Command("_INFERIS_COMPLETE", call_keys, args)


def prune_consumers(stream: str, min_idle_ms: int, live: Sequence[str]) -> Command:
    """``_INFERIS_PRUNE``: forget consumers of the group that own nothing, have been
    silent ``min_idle_ms`` and are not ``live`` (connected), atomically."""
    return Command("_INFERIS_PRUNE", [stream], [min_idle_ms, *live])
