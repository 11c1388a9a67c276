"""Store-time signatures: load a model once with its backend and record what it takes.

The SDK is framework-free and cannot open a model, so the engine-side store
(`inferis model store`, :func:`store_model`) reads the signature from the
model itself and writes it into the version's metadata, where clients and
operators can see it before any worker has loaded the model.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from inferis.client import Client
from inferis.client.protocol.errors import ArgumentError, InferisError
from inferis.client.protocol.models import ModelInfo, StoredVersion, TensorSpec

from ..backends.base import BackendOptions
from ..backends.registry import load_model
from .loading import UNSAFE_FORMATS
from .pipeline import PIPELINE_BACKEND
from .signature import merge_specs

SpecLike = TensorSpec | Mapping[str, Any]


log = logging.getLogger(__name__)

def describe(
    backend: str,
    blob: bytes,
    *,
    format: str = "",
    device: str = "CPU",
    extra: Mapping[str, Any] | None = None,
    inputs: Sequence[SpecLike] = (),
    outputs: Sequence[SpecLike] = (),
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's input and output specs, completed by what was declared.

    Formats that run code when loaded (pickle) are not opened here: the
    declared specs are returned unchanged.
    """
    declared_in = [TensorSpec.coerce(s) for s in inputs]
    declared_out = [TensorSpec.coerce(s) for s in outputs]
    if backend == PIPELINE_BACKEND or format in UNSAFE_FORMATS:
        return declared_in, declared_out
    info = ModelInfo(
        name="inspect", version=0, digest=hashlib.sha256(blob).hexdigest(), backend=backend,
        format=format, device=device, inputs=tuple(declared_in), outputs=tuple(declared_out),
        extra=dict(extra or {}), size=len(blob),
    )
    # Threads 0: inspecting must not change the calling process's thread settings.
    options = BackendOptions(intra_op_threads=0, inter_op_threads=0)
    try:
        model = load_model(blob, info, options)
    except InferisError:
        raise
    except Exception as exc:  # the backend's own words, as one clear refusal
        raise ArgumentError(
            f"{backend} cannot load this {format or backend} model, so it would never run: "
            f"{type(exc).__name__}: {_first_line(exc)}") from None
    try:
        found_in = merge_specs(model.inputs, declared_in)
        found_out = merge_specs(model.outputs, declared_out)
    finally:
        model.close()
    # Declared specs are positional: record all of a side or none of it.
    return (
        found_in if all(s.known for s in found_in) else declared_in,
        found_out if all(s.known for s in found_out) else declared_out,
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
    if options.get("batch"):
        for problem in unbatchable_inputs(inputs):
            log.warning("%s: %s, so its requests run one at a time although batching is "
                        "asked for; give that input a leading batch dimension (e.g. [1, n])",
                        name, problem)
    return client.modelstore(name, backend, blob, inputs=inputs, outputs=outputs, **options)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else ""


def unbatchable_inputs(inputs: Any) -> list[str]:
    """Inputs that keep requests of a batching model from being batched: the worker
    stacks requests along the first dimension every input shares, so an input
    without one (rank 0 or 1, like a [256] vector) runs each request alone."""
    problems = []
    for spec in inputs or ():
        shape = spec.shape if hasattr(spec, "shape") else spec.get("shape")
        name = spec.name if hasattr(spec, "name") else spec.get("name")
        if shape is not None and len(shape) < 2:
            dims = ",".join("?" if d is None else str(d) for d in shape)
            problems.append(f"input {name} has no batch dimension ([{dims}])")
    return problems
