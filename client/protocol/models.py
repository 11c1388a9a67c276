"""Typed model metadata, parsed once: what a stored version is and how it batches.

``MODELGET`` returns a flat field/value array of strings (docs/PROTOCOL.md
§3.3); :meth:`ModelInfo.parse` turns it into these objects, and everything
else (the SDK, the worker's batching and signature checks, the backends)
reads the typed fields instead of JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# A backend that cannot tell an input's dtype reports this; it is not checked.
ANY_DTYPE = "any"
# Prefix of the dtype a backend reports for an input or output that is not a
# tensor (say an ONNX sequence of maps): requests to it fail clearly.
UNSUPPORTED_DTYPE = "unsupported:"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output: wire dtype name and shape (None marks a dynamic dim)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None = None  # None: rank unknown

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.name}: {self.dtype}[...]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    @property
    def known(self) -> bool:
        """Whether dtype and every dimension's presence are known (a full declaration)."""
        return (
            self.shape is not None
            and self.dtype != ANY_DTYPE
            and not self.dtype.startswith(UNSUPPORTED_DTYPE)
        )

    def to_wire(self) -> dict[str, Any]:
        """The ``{"name", "dtype", "shape"}`` form of MODELSTORE and the metadata (-1: dynamic)."""
        shape = [-1 if d is None else d for d in self.shape or ()]
        return {"name": self.name, "dtype": self.dtype, "shape": shape}

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> TensorSpec:
        raw = doc.get("shape")
        # Lua's cjson writes an empty list as {}: a scalar's shape arrives that way.
        dims = raw if isinstance(raw, list) else []
        return cls(
            str(doc["name"]),
            str(doc["dtype"]),
            tuple(None if d is None or int(d) < 0 else int(d) for d in dims),
        )

    @classmethod
    def coerce(cls, spec: TensorSpec | Mapping[str, Any]) -> TensorSpec:
        return spec if isinstance(spec, TensorSpec) else cls.from_wire(spec)


@dataclass(frozen=True, slots=True)
class Batching:
    """Dynamic batching of a version (Triton's settings); off unless max_batch_size > 1."""

    max_batch_size: int = 0
    max_queue_delay_us: int = 0
    preferred_sizes: tuple[int, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> Batching:
        preferred = sorted({int(n) for n in doc.get("preferred_batch_sizes") or () if int(n) > 0})
        return cls(
            int(doc.get("max_batch_size", 0)),
            int(doc.get("max_queue_delay_us", 0)),
            tuple(preferred),
        )

    @classmethod
    def coerce(cls, value: Batching | Sequence[Any] | None) -> Batching | None:
        """From the SDK's ``batch=(max, delay_us[, preferred])`` or a Batching."""
        if value is None or isinstance(value, Batching):
            return value
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not (
            2 <= len(value) <= 3
        ):
            raise TypeError("batch is (max_batch_size, max_queue_delay_us[, preferred sizes])")
        preferred = tuple(int(n) for n in value[2]) if len(value) == 3 else ()
        return cls(int(value[0]), int(value[1]), preferred)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Metadata of one stored model version."""

    name: str
    version: int
    digest: str
    backend: str
    format: str = ""
    device: str = "CPU"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    batching: Batching = field(default_factory=Batching)
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    created_ms: int = 0
    size: int = 0
    chunks: int = 1
    signature: str = ""  # ed25519 over client/signing.py's message, hex; "" unsigned
    signer: str = ""  # the signing key's id
    encrypted: str = ""  # the id of the key the blob is encrypted with; "" plain

    @property
    def label(self) -> str:
        return f"model {self.name} v{self.version}"

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> tuple[ModelInfo, bytes | None]:
        """Parse MODELGET's flat field/value reply; the blob too if it was asked for."""
        it = iter(reply)
        raw = {_text(k): v for k, v in zip(it, it, strict=True)}
        blob = raw.pop("blob", None)
        f = {k: _text(v) for k, v in raw.items()}
        info = cls(
            name=f["name"],
            version=int(f["version"]),
            digest=f["digest"],
            backend=f["backend"],
            format=f.get("format", ""),
            device=f.get("device", "CPU"),
            inputs=_specs(f.get("inputs")),
            outputs=_specs(f.get("outputs")),
            batching=Batching.from_wire(_json_map(f.get("batching"))),
            tags={str(k): str(v) for k, v in _json_map(f.get("tags")).items()},
            extra=_json_map(f.get("extra")),
            created_ms=int(f.get("created_ms", 0)),
            size=int(f.get("size", 0)),
            chunks=int(f.get("chunks", 1)),
            signature=f.get("signature", ""),
            signer=f.get("signer", ""),
            encrypted=f.get("encrypted", ""),
        )
        return info, blob

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the CLI's ``model get``)."""
        return {
            "name": self.name, "version": self.version, "digest": self.digest,
            "backend": self.backend, "format": self.format, "device": self.device,
            "inputs": [s.to_wire() for s in self.inputs],
            "outputs": [s.to_wire() for s in self.outputs],
            "batching": {
                "max_batch_size": self.batching.max_batch_size,
                "max_queue_delay_us": self.batching.max_queue_delay_us,
                "preferred_batch_sizes": list(self.batching.preferred_sizes),
            },
            "tags": self.tags, "extra": self.extra, "created_ms": self.created_ms,
            "size": self.size, "chunks": self.chunks,
            "signature": self.signature, "signer": self.signer, "encrypted": self.encrypted,
        }


@dataclass(frozen=True, slots=True)
class StoredVersion:
    name: str
    version: int
    digest: str
    created: bool


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _specs(text: str | None) -> tuple[TensorSpec, ...]:
    value = json.loads(text) if text else []
    if not isinstance(value, list):  # Lua's cjson writes {} for []
        return ()
    return tuple(TensorSpec.from_wire(d) for d in value)


def _json_map(text: str | None) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {}
