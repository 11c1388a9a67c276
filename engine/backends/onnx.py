"""ONNX Runtime backend: CPU, and the CUDA provider when onnxruntime-gpu has one."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from inferis.client.protocol.defaults import GRAPH_OPTIMIZATION_LEVELS

from .base import UNSUPPORTED_DTYPE, BackendOptions, ModelInfo, TensorSpec, gpu_index

log = logging.getLogger(__name__)

# ONNX type strings -> wire dtype names (client/tensor.py)
_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    dtype = _ONNX_DTYPES.get(arg.type)
    if dtype is None:
        # e.g. seq(map(int64,tensor(float))) from a ZipMap node
        return TensorSpec(arg.name, f"{UNSUPPORTED_DTYPE}{arg.type}", None)
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape or [])
    return TensorSpec(arg.name, dtype, shape)


# META graph_optimization -> ONNX Runtime's level (the default is all).
_LEVELS = dict(zip(GRAPH_OPTIMIZATION_LEVELS, (
    ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
), strict=True))


def optimization_level(info: ModelInfo) -> ort.GraphOptimizationLevel:
    """The version's graph optimization level: its META ``graph_optimization``, chosen
    at store time (``disabled`` for a graph optimized at level all then,
    engine/models/optimize.py)."""
    name = info.extra.get("graph_optimization", "all")
    if name not in _LEVELS:
        raise ValueError(f"META graph_optimization must be one of "
                         f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}, got {name!r}")
    return _LEVELS[name]


class OnnxModel:
    def __init__(self, session: ort.InferenceSession, device: str) -> None:
        self._session = session
        self.device = device
        self.inputs = [_spec(a) for a in session.get_inputs()]
        self.outputs = [_spec(a) for a in session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for spec in self.outputs:
            if spec.dtype.startswith(UNSUPPORTED_DTYPE):
                raise ValueError(
                    f"output {spec.name} has type {spec.dtype[len(UNSUPPORTED_DTYPE):]}, "
                    "which is not a tensor; "
                    "for scikit-learn classifiers convert with options={'zipmap': False}"
                )
        values = self._session.run(self._output_names, feed)
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]


class OnnxBackend:
    name = "onnx"

    def load(self, blob: bytes, info: ModelInfo, options: BackendOptions) -> OnnxModel:
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.log_severity_level = 3
        so.graph_optimization_level = optimization_level(info)
        providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
        device = "CPU"
        if gpu_index(info.device) is not None:
            # The model prefers a GPU; the worker's --device says which one it has.
            worker_gpu = gpu_index(options.device)
            if worker_gpu is not None and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": str(worker_gpu)}))
                device = f"GPU:{worker_gpu}"
            else:
                log.warning(
                    "model %s v%s asks for %s but this worker serves %s (providers: %s); "
                    "running it on CPU", info.name, info.version, info.device, options.device,
                    ", ".join(ort.get_available_providers()),
                )
        session = ort.InferenceSession(blob, sess_options=so, providers=providers)
        return OnnxModel(session, device)
