"""Dynamically quantized int8 variants, and how far they stray from the original.

:func:`quantize_onnx` runs ONNX Runtime's ``quantize_dynamic``: weights of
MatMul, Gemm, attention and recurrent nodes stored as int8, activations
quantized at run time. :func:`compare` runs the original and the variant on the
same sample with the backend workers use, and reports the largest absolute
difference of float outputs and how often the predicted classes agree (an
integer output such as ``label``, else the argmax of the first ``[n, k]`` float
output, else a ``[n, 1]`` probability at 0.5).

PyTorch is not supported: ``torch.ao.quantization.quantize_dynamic`` swaps the
eager ``nn.Linear``/``nn.LSTM`` modules of a Python model, and a TorchScript
archive holds compiled modules instead, so it would return the model unchanged
(quantize before scripting, or export to ONNX).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inferis.client.protocol.errors import ArgumentError
from inferis.client.protocol.models import ModelInfo, TensorSpec

from ..backends.base import BackendOptions, LoadedModel
from ..backends.registry import canonical_name, load_model

SAMPLE_ROWS = 64  # rows of the random sample drawn when none is given
# Node types quantize_dynamic writes: a variant without any quantized nothing.
_QUANTIZED_OPS = frozenset({"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                            "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM",
                            "QGemm", "MatMulIntegerToFloat", "DequantizeLinear"})


@dataclass(frozen=True)
class Comparison:
    rows: int
    max_abs_diff: float  # over float outputs; 0 when there are none
    agreement: float | None  # share of rows whose class agrees; None: no class output
    classes_from: str  # which output the classes were read from, and how


def quantize(info: ModelInfo, blob: bytes, op_types: Sequence[str] = ()) -> bytes:
    if canonical_name(info.backend) != "onnx":
        raise ArgumentError(
            f"{info.label} is a {info.backend} model; quantize supports ONNX only: "
            "torch.ao.quantization.quantize_dynamic swaps eager nn.Linear modules, which a "
            "TorchScript archive does not have (it would store the model unchanged); quantize "
            "the model before scripting it, or export it to ONNX")
    return quantize_onnx(blob, op_types)


def quantize_onnx(blob: bytes, op_types: Sequence[str] = ()) -> bytes:
    """``op_types`` limits what is quantized (say MatMul and Gemm: ONNX Runtime's
    dynamic ConvInteger is slower than float Conv on many CPUs); () means its default."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="inferis-quantize-") as tmp:
        source, target = Path(tmp) / "model.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(blob)
        logging.disable(logging.WARNING)  # its advice to pre-process, on the root logger
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8,
                             op_types_to_quantize=list(op_types) or None)
        except Exception as exc:
            raise ArgumentError(f"ONNX Runtime cannot quantize this model: "
                                f"{type(exc).__name__}: {exc}") from None
        finally:
            logging.disable(logging.NOTSET)
        quantized = target.read_bytes()
    ops = {node.op_type for node in onnx.load_from_string(quantized).graph.node}
    if not ops & _QUANTIZED_OPS:
        raise ArgumentError("nothing to quantize: the model has no MatMul, Gemm, Conv, "
                            "attention or LSTM weights that quantize_dynamic handles")
    return quantized


def load_here(info: ModelInfo, blob: bytes) -> LoadedModel:
    """``blob`` loaded in this process as a version with ``info``'s metadata loads on a
    worker (threads 0: the caller's thread settings are left alone)."""
    probe = ModelInfo(name=info.name, version=info.version,
                      digest=hashlib.sha256(blob).hexdigest(), backend=info.backend,
                      format=info.format, inputs=info.inputs, outputs=info.outputs,
                      extra=info.extra, size=len(blob))
    return load_model(blob, probe, BackendOptions(intra_op_threads=0, inter_op_threads=0))


def compare(original: Mapping[str, np.ndarray], variant: Mapping[str, np.ndarray]
            ) -> Comparison:
    diffs = [0.0]
    rows = 0
    for name, want in original.items():
        got = np.asarray(variant[name])
        if got.shape != want.shape:
            raise ArgumentError(f"output {name}: the variant gives shape {got.shape}, "
                                f"the original {want.shape}")
        rows = max(rows, int(want.shape[0]) if want.ndim else 1)
        if want.dtype.kind == "f":
            diffs.append(float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0)
    agreement, source = _agreement(original, variant)
    return Comparison(rows, max(diffs), agreement, source)


def _agreement(original: Mapping[str, np.ndarray], variant: Mapping[str, np.ndarray]
               ) -> tuple[float | None, str]:
    for name, want in original.items():
        if want.dtype.kind in "iub" and want.ndim >= 1 and want.size:
            same = (want.reshape(len(want), -1) == np.asarray(variant[name]).reshape(
                len(want), -1)).all(axis=1)
            return float(same.mean()), f"output {name}"
    for name, want in original.items():
        if want.dtype.kind == "f" and want.ndim == 2 and want.shape[0]:
            got = np.asarray(variant[name])
            if want.shape[1] > 1:
                return float((want.argmax(1) == got.argmax(1)).mean()), f"argmax of {name}"
            if ((want >= 0) & (want <= 1)).all():
                return float(((want >= 0.5) == (got >= 0.5)).mean()), f"{name} at 0.5"
    return None, "no class output"


def random_sample(inputs: Sequence[TensorSpec], rows: int = SAMPLE_ROWS,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs drawn from the signature: normal floats, small integers; a dynamic first
    dimension is ``rows``. A real sample (``--sample``) tells much more."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in inputs:
        if spec.shape is None or any(d is None for d in spec.shape[1:]):
            raise ArgumentError(f"input {spec.describe()} has dimensions the signature does "
                                "not fix: give a sample (--sample)")
        shape = tuple(rows if d is None else d for d in spec.shape)
        if spec.dtype.startswith("float"):
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.startswith(("int", "uint")):
            feed[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
        elif spec.dtype == "bool":
            feed[spec.name] = rng.random(shape) < 0.5
        else:
            raise ArgumentError(f"cannot draw a random {spec.dtype} input ({spec.name}): "
                                "give a sample (--sample)")
    return feed
