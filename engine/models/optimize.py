"""Store-time graph optimization: done once on the storing machine, not at every load.

ONNX Runtime optimizes a graph each time a session starts (level ``all`` unless
told otherwise). :func:`optimize_onnx` runs it once at a chosen level and keeps
the result (``optimized_model_filepath``); the version stores that graph, with
META ``optimized`` naming the level, the tool and the original file's digest.
``extended`` (the default) is as far as a graph stays portable: ``all`` adds
layout transformations for the storing machine's CPU, which ONNX Runtime says to
run only where they were made. So workers still load an ``extended`` graph at
level ``all`` (the passes already applied find nothing to do, the layout pass
fits their own CPU: it is most of a convolution's speed-up), and an ``all``
graph with ``graph_optimization: disabled``, as it is.

TorchScript (:func:`optimize_torchscript`): ``torch.jit.freeze`` (parameters and
attributes become constants, so the graph can be folded) is saved as the
version's archive, with META ``optimize_for_inference: true``: workers run
``torch.jit.optimize_for_inference`` (fusions, MKLDNN layouts for their own CPU)
when they load it, since TorchScript cannot save the MKLDNN constants that pass
makes of convolutions.

Frameworks are imported only when a model is optimized.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferis.client.protocol.defaults import GRAPH_OPTIMIZATION_LEVELS
from inferis.client.protocol.errors import ArgumentError

from ..backends.registry import canonical_name

OFFLINE_LEVELS = GRAPH_OPTIMIZATION_LEVELS[1:]  # "disabled" would optimize nothing
DEFAULT_LEVEL = "extended"


@dataclass(frozen=True)
class Optimized:
    blob: bytes  # what to store as the version
    meta: dict[str, Any]  # what to merge into its META


def optimize(backend: str, format: str, blob: bytes, level: str = DEFAULT_LEVEL) -> Optimized:
    """The optimized model for ``backend``/``format``, or ArgumentError saying why not."""
    key = canonical_name(backend)
    if key == "onnx":
        return optimize_onnx(blob, level)
    if key == "torch" and (format or "torchscript") == "torchscript":
        return optimize_torchscript(blob)
    raise ArgumentError(f"--optimize supports ONNX models and TorchScript archives, not "
                        f"backend {backend} format {format or '(default)'}")


def optimize_onnx(blob: bytes, level: str = DEFAULT_LEVEL) -> Optimized:
    import onnxruntime as ort

    if level not in OFFLINE_LEVELS:
        raise ArgumentError(f"optimization level must be one of {', '.join(OFFLINE_LEVELS)}, "
                            f"got {level!r}")
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with tempfile.TemporaryDirectory(prefix="inferis-optimize-") as tmp:
        target = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = str(target)
        options.log_severity_level = 3  # the "hardware specific" warning of level all is ours
        try:
            ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ArgumentError(f"ONNX Runtime cannot load this model to optimize it: "
                                f"{type(exc).__name__}: {_first_line(exc)}") from None
        optimized = target.read_bytes()
    meta: dict[str, Any] = {
        "optimized": _record(blob, level=level, tool=f"onnxruntime {ort.__version__}")}
    if level == "all":
        meta["graph_optimization"] = "disabled"  # nothing left to do at load
    return Optimized(optimized, meta)


def optimize_torchscript(blob: bytes) -> Optimized:
    import torch

    out = io.BytesIO()
    try:
        module = torch.jit.load(io.BytesIO(blob), map_location="cpu").eval()
        torch.jit.save(torch.jit.freeze(module), out)
        torch.jit.optimize_for_inference(torch.jit.load(io.BytesIO(out.getvalue())))
    except Exception as exc:  # what a worker would meet at load, said here
        raise ArgumentError(f"torch cannot freeze and optimize this TorchScript archive: "
                            f"{type(exc).__name__}: {_first_line(exc)}") from None
    return Optimized(out.getvalue(), {
        "optimize_for_inference": True,
        "optimized": _record(blob, passes=["freeze"], tool=f"torch {torch.__version__}"),
    })


def _record(original: bytes, **fields: Any) -> dict[str, Any]:
    return {**fields, "original_digest": hashlib.sha256(original).hexdigest()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
