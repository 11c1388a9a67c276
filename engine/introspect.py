"""Store-time signatures: load a model once with its backend and record what it takes.

The SDK is framework-free and cannot open a model, so the engine-side store
(`inferis model store`, :func:`store_model`) reads the signature from the
model itself and writes it into the version's metadata, where clients and
operators can see it before any worker has loaded the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from inferis.client import Client
from inferis.client.core import ModelInfo, StoredVersion

from .backends.base import ANY_DTYPE, BackendOptions, TensorSpec
from .backends.registry import load_model
from .models import UNSAFE_FORMATS
from .pipeline import PIPELINE_BACKEND
from .signature import merge_specs

Spec = dict[str, Any]


def _as_declared(specs: Sequence[TensorSpec]) -> list[Spec] | None:
    """Specs in MODELSTORE's form, or None when any part is unknown."""
    out = []
    for spec in specs:
        if spec.dtype == ANY_DTYPE or spec.dtype.startswith("unsupported:") or spec.shape is None:
            return None
        shape = [-1 if d is None else d for d in spec.shape]
        out.append({"name": spec.name, "dtype": spec.dtype, "shape": shape})
    return out


def describe(
    backend: str,
    blob: bytes,
    *,
    format: str = "",
    device: str = "CPU",
    extra: Mapping[str, Any] | None = None,
    inputs: Sequence[Spec] = (),
    outputs: Sequence[Spec] = (),
) -> tuple[list[Spec], list[Spec]]:
    """The model's input and output specs, completed by what was declared.

    Formats that run code when loaded (pickle) are not opened here: the
    declared specs are returned unchanged.
    """
    if backend == PIPELINE_BACKEND or format in UNSAFE_FORMATS:
        return list(inputs), list(outputs)
    info = ModelInfo(
        name="inspect", version=0, digest=hashlib.sha256(blob).hexdigest(), backend=backend,
        format=format, device=device, inputs=list(inputs), outputs=list(outputs), batching={},
        tags={}, extra=dict(extra or {}), created_ms=0, size=len(blob), chunks=1,
    )
    # Threads 0: inspecting must not change the calling process's thread settings.
    options = BackendOptions(intra_op_threads=0, inter_op_threads=0)
    model = load_model(blob, info, options)
    try:
        found_in = _as_declared(merge_specs(model.inputs, inputs))
        found_out = _as_declared(merge_specs(model.outputs, outputs))
    finally:
        model.close()
    # Declared specs are positional: record all of a side or none of it.
    return found_in if found_in is not None else list(inputs), (
        found_out if found_out is not None else list(outputs)
    )


def store_model(
    client: Client, name: str, backend: str, blob: bytes, **options: Any
) -> StoredVersion:
    """``client.modelstore`` with the signature read from the model itself."""
    inputs, outputs = describe(
        backend,
        blob,
        format=options.get("format", ""),
        device=options.get("device", "CPU"),
        extra=options.get("extra"),
        inputs=options.pop("inputs", None) or (),
        outputs=options.pop("outputs", None) or (),
    )
    return client.modelstore(name, backend, blob, inputs=inputs, outputs=outputs, **options)
