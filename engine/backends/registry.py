"""Which backends exist, and the lazy import that finds out if one is installed.

A backend module is imported the first time a model needs it, so a worker
starts with only the extras it has; a missing one is an error that names
the extra to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from inferis.client.protocol.errors import BackendUnavailableError

from .base import Backend, BackendOptions, LoadedModel, ModelInfo


@dataclass(frozen=True)
class BackendEntry:
    module: str
    cls: str
    extra: str
    # Its models are programs whose ops can read files or open sockets.
    runs_model_code: bool = False


BACKENDS: dict[str, BackendEntry] = {
    "onnx": BackendEntry("inferis.engine.backends.onnx", "OnnxBackend", "onnx"),
    "torch": BackendEntry(
        "inferis.engine.backends.torch", "TorchBackend", "torch", runs_model_code=True
    ),
    "tensorflow": BackendEntry(
        "inferis.engine.backends.tensorflow", "TensorFlowBackend", "tensorflow",
        runs_model_code=True,
    ),
    "sklearn": BackendEntry("inferis.engine.backends.sklearn", "SklearnBackend", "sklearn"),
}
ALIASES = {
    "onnxruntime": "onnx",
    "ort": "onnx",
    "pytorch": "torch",
    "tf": "tensorflow",
    "scikit-learn": "sklearn",
}

_loaded: dict[str, Backend] = {}


def canonical_name(name: str) -> str:
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in BACKENDS:
        raise BackendUnavailableError(
            f"backend {name!r} is not available on this worker; available: {', '.join(BACKENDS)}"
        )
    return key


def executes_model_code(name: str, options: BackendOptions) -> bool:
    """Whether a model of backend ``name`` can run code of its own: graph ops that
    reach files and the network, or (with --trust-unsafe-formats) a pickle."""
    key = canonical_name(name)
    return BACKENDS[key].runs_model_code or (key == "sklearn" and options.trust_unsafe_formats)


def get_backend(name: str) -> Backend:
    key = canonical_name(name)
    backend = _loaded.get(key)
    if backend is None:
        entry = BACKENDS[key]
        try:
            module = importlib.import_module(entry.module)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend {key} is not installed on this worker ({exc.name or exc}); "
                f"install it with: pip install 'inferis[{entry.extra}]'"
            ) from None
        backend = getattr(module, entry.cls)()
        _loaded[key] = backend
    return backend


def load_model(blob: bytes, info: ModelInfo, options: BackendOptions) -> LoadedModel:
    """Load ``blob`` with its backend. A dependency the backend imports only when
    loading (skops, say) that is missing is ENOBACKEND naming the extra, like a
    missing framework; any other failure propagates as it is."""
    key = canonical_name(info.backend)
    backend = get_backend(key)
    try:
        return backend.load(blob, info, options)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend {key} cannot load model {info.name} v{info.version}: "
            f"{exc.name or exc} is not installed on this worker; install it with: "
            f"pip install 'inferis[{BACKENDS[key].extra}]'"
        ) from None
