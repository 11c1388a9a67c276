"""Answers: what a worker writes and what a caller reads, encode and decode side by side.

A caller with a reply stream gets one stream entry per answered request entry,
one field ``d``: a msgpack array of answer maps (docs/PROTOCOL.md §7.1)::

    rid      request id
    ok       true on success
    model    model name
    version  the version that served it (0 if none was resolved)
    digest   that version's SHA-256 ("" if none)
    timing   {"queue_us", "run_us", "batch"}
    cached   true when the answer came from the prediction cache (absent otherwise)
    outputs  [[name, key or nil, encoded tensor or nil]...]   (ok only)
    code     error code                                       (errors only)
    error    message                                          (errors only)

A caller without one (redis-cli) gets one JSON line per request on its done
list (§7.2), naming output keys instead of carrying values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from .errors import InferisError, error_from_code
from .tensor import decode_tensor


@dataclass(slots=True)
class Answer:
    """One request's answer as the worker writes it."""

    rid: str
    model: str
    version: int = 0
    digest: str = ""
    error: InferisError | None = None
    # (output name, key it was written to or None, encoded value or None if too large)
    outputs: list[tuple[str, str | None, bytes | None]] = field(default_factory=list)
    queue_us: int = 0
    run_us: int = 0
    batch: int = 1
    cached: bool = False  # served from the prediction cache: the model did not run

    def as_map(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "rid": self.rid, "ok": self.error is None, "model": self.model,
            "version": self.version, "digest": self.digest,
            "timing": {"queue_us": self.queue_us, "run_us": self.run_us, "batch": self.batch},
        }
        if self.error is None:
            msg["outputs"] = [list(o) for o in self.outputs]
        else:
            msg["code"], msg["error"] = self.error.code, self.error.message
        if self.cached:
            msg["cached"] = True
        return msg

    def as_json_line(self) -> bytes:
        """The done-list form: output keys by name, no values, no timing."""
        doc: dict[str, Any] = {
            "rid": self.rid, "status": "ok" if self.error is None else "error",
            "model": self.model, "version": self.version, "digest": self.digest,
        }
        if self.error is None:
            doc["outputs"] = {name: key for name, key, _ in self.outputs}
        else:
            doc["code"], doc["error"] = self.error.code, self.error.message
        if self.cached:
            doc["cached"] = True
        return json.dumps(doc).encode()


def pack_answers(answers: Sequence[Answer]) -> bytes:
    """The ``d`` field of a reply stream entry."""
    return msgpack.packb([a.as_map() for a in answers], use_bin_type=True)


@dataclass
class RunResult:
    """The answer to one run as a caller sees it: output tensors by name, or an error."""

    rid: str
    model: str = ""
    version: int = 0
    digest: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    output_keys: dict[str, str] = field(default_factory=dict)
    error: InferisError | None = None
    timing_us: dict[str, int] = field(default_factory=dict)
    batch_size: int = 1  # how many requests the worker ran together with this one
    cached: bool = False  # answered from the prediction cache, without running the model
    missing: list[str] = field(default_factory=list)  # outputs to read by key

    def raise_for_error(self) -> RunResult:
        if self.error is not None:
            raise self.error
        return self


def unpack_answers(payload: bytes) -> list[RunResult]:
    """Decode a reply stream entry's ``d`` field; inline outputs are decoded, large
    ones are listed in ``missing`` for the caller to read by key."""
    results = []
    for msg in msgpack.unpackb(payload, raw=False):
        timing = dict(msg.get("timing") or {})
        result = RunResult(
            rid=msg["rid"], model=msg.get("model", ""), version=msg.get("version", 0),
            digest=msg.get("digest", ""), batch_size=int(timing.pop("batch", 1)),
            timing_us=timing, cached=bool(msg.get("cached", False)),
        )
        if not msg.get("ok"):
            result.error = error_from_code(msg.get("code", "EINFERIS"), msg.get("error", ""))
        else:
            for name, key, inline in msg.get("outputs", ()):
                if key is not None:  # None: an ephemeral output that was not kept as a key
                    result.output_keys[name] = key
                if inline is None:
                    result.missing.append(name)
                else:
                    result.outputs[name] = decode_tensor(inline)
        results.append(result)
    return results


def fill_missing(result: RunResult, values: Sequence[bytes | None]) -> RunResult:
    """Attach the values read for ``result.missing`` (in that order)."""
    for name, value in zip(result.missing, values, strict=True):
        if value is None:
            result.error = InferisError(f"output {name} expired before it was read")
            return result
        result.outputs[name] = decode_tensor(value)
    result.missing = []
    return result


def text_map(flat: Any) -> dict[str, str]:
    """A flat RESP2 field/value reply (HGETALL and the like) as a dict of str."""
    it = iter(flat or ())
    return {_str(k): _str(v) for k, v in zip(it, it, strict=True)}


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
