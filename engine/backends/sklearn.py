"""scikit-learn backend: estimators and pipelines run in-process.

Formats: ``skops`` (the default; safe loading, nothing runs but trusted
types), and ``pickle``/``joblib`` (can run any code when loaded, so only on a
worker started with ``--trust-unsafe-formats``).

Outputs carry skl2onnx's names and shapes (``label``/``probabilities`` for
classifiers, ``variable`` otherwise), so a client gets interchangeable results
from this backend and from the same model converted to ONNX.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any

import numpy as np

from inferis.client.protocol.errors import UnsafeModelError
from inferis.client.protocol.tensor import wire_dtype

from .archives import check_zip
from .base import ANY_DTYPE, BackendOptions, ModelInfo, TensorSpec

SAFE_FORMATS = ("skops",)
UNSAFE_FORMATS = ("pickle", "joblib")

# Classes defined in these packages may appear in a skops file on top of the
# types skops trusts itself (fitted trees, loss and binning objects, ...).
TRUSTED_PACKAGES = ("sklearn", "numpy", "scipy")
# ... except these parts, whose classes open, truncate or delete files (or run
# build tools) when constructed: a skops file can call a trusted class.
_UNSAFE_MODULES = (
    "numpy.distutils",
    "numpy.f2py",
    "numpy.testing",
    "numpy.lib._datasource",
    "numpy.lib.npyio",
    "numpy._core.memmap",
    "numpy.core.memmap",
    "scipy.io",
    "scipy.odr",
    "sklearn.utils._testing",
)
_UNSAFE_CLASSES: tuple[type, ...] = (np.memmap, np.lib.npyio.DataSource)

# BackendOptions.extra key: comma-separated fully qualified names an operator trusts.
SKOPS_TRUSTED_OPTION = "skops_trusted"


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def trusted_by_package(name: str) -> bool:
    """True when ``name`` ("module.Class") is a safe class from TRUSTED_PACKAGES.

    It must resolve the way skops resolves it (one getattr on the module) to a
    class that is defined in one of those packages: a function, or a class a
    module merely imports (``subprocess.Popen``, say), is not trusted.
    """
    module_name, _, attr = name.rpartition(".")
    parts = module_name.split(".")
    if parts[0] not in TRUSTED_PACKAGES or {"tests", "conftest"} & set(parts):
        return False
    if _within(module_name, _UNSAFE_MODULES):
        return False
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return False
    if not isinstance(obj, type) or obj.__module__.split(".")[0] not in TRUSTED_PACKAGES:
        return False
    return not _within(obj.__module__, _UNSAFE_MODULES) and not issubclass(obj, _UNSAFE_CLASSES)


def _load_skops(blob: bytes, info: ModelInfo, options: BackendOptions) -> Any:
    import skops.io as sio  # slow to import (it pulls in torch when installed)

    # Trust is the worker operator's decision, never the uploader's: whoever can
    # MODELSTORE could otherwise name any callable in the file and have it run
    # here. Nothing stored with the model (tags, META) widens what is trusted.
    by_operator = {
        n.strip() for n in options.extra.get(SKOPS_TRUSTED_OPTION, "").split(",") if n.strip()
    }
    check_zip(blob, options, "the skops file")
    needed = sio.get_untrusted_types(data=blob)
    refused = [n for n in needed if n not in by_operator and not trusted_by_package(n)]
    if refused:
        raise UnsafeModelError(
            f"model {info.name} v{info.version} (skops) needs types this worker does not "
            f"trust: {', '.join(refused)}. skops only builds trusted types; an operator who "
            f"trusts them starts the worker with the backend option "
            f"{SKOPS_TRUSTED_OPTION}={','.join(refused)}"
        )
    return sio.loads(blob, trusted=needed)


def _load_unsafe(blob: bytes, info: ModelInfo, options: BackendOptions) -> Any:
    # The model cache refuses these formats first; this keeps the backend safe
    # on its own, whoever calls it.
    if not options.trust_unsafe_formats:
        raise UnsafeModelError(
            f"model {info.name} v{info.version} is in format {info.format!r}, which can run "
            "arbitrary code when loaded; the worker refuses it unless started with "
            "--trust-unsafe-formats"
        )
    if info.format == "joblib":
        import joblib

        return joblib.load(io.BytesIO(blob))
    return pickle.loads(blob)


def _first_step(estimator: Any) -> Any:
    """The step that receives the raw input (through nested pipelines)."""
    while hasattr(estimator, "steps"):
        estimator = estimator.steps[0][1]
    return estimator


def _is_text_input(estimator: Any) -> bool:
    # Count/Tfidf/Hashing vectorizers take an iterable of documents, not a matrix.
    return not hasattr(estimator, "n_features_in_") and hasattr(
        _first_step(estimator), "build_analyzer"
    )


def _input_spec(estimator: Any) -> TensorSpec:
    if _is_text_input(estimator):
        return TensorSpec("X", "str", (None,))
    features = getattr(estimator, "n_features_in_", None)
    if isinstance(features, (int, np.integer)):
        # sklearn converts ints and floats itself; the dtype is not checked.
        return TensorSpec("X", ANY_DTYPE, (None, int(features)))
    return TensorSpec("X", ANY_DTYPE, None)  # declared INPUT specs fill this in


def _label_dtype(classes: np.ndarray) -> str:
    try:
        return wire_dtype(np.asarray(classes).dtype)
    except ValueError:
        return ANY_DTYPE


class SklearnModel:
    device = "CPU"  # scikit-learn has no GPU path

    def __init__(self, estimator: Any) -> None:
        from sklearn.base import is_classifier
        from sklearn.utils.validation import check_is_fitted

        if not (hasattr(estimator, "predict") or hasattr(estimator, "transform")):
            raise TypeError(
                f"a {type(estimator).__name__} has neither predict nor transform; "
                "store a fitted scikit-learn estimator or pipeline"
            )
        check_is_fitted(estimator)
        # n_jobs is left as stored: it changes speed, never results, and whoever
        # trained the model chose it. scikit-learn has no per-model thread pool
        # for the worker's --intra-op-threads to size (BLAS/OpenMP are per process).
        self._estimator = estimator
        self.inputs = [_input_spec(estimator)]
        classes = getattr(estimator, "classes_", None)
        self._classifier = is_classifier(estimator) and classes is not None
        self._probabilities = self._classifier and hasattr(estimator, "predict_proba")
        if self._classifier and isinstance(classes, list):  # multi-output: one array each
            self._probabilities = False
            self.outputs = [TensorSpec("label", ANY_DTYPE, (None, len(classes)))]
        elif self._classifier:
            self.outputs = [TensorSpec("label", _label_dtype(classes), (None,))]
            if self._probabilities:
                self.outputs.append(TensorSpec("probabilities", "float64", (None, len(classes))))
        elif hasattr(estimator, "predict"):
            self.outputs = [TensorSpec("variable", "float64", (None, None))]
        else:
            self.outputs = [TensorSpec("variable", ANY_DTYPE, (None, None))]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feed["X"]
        estimator = self._estimator
        if self._classifier:
            out = {"label": _tensor(estimator.predict(x))}
            if self._probabilities:
                out["probabilities"] = _tensor(estimator.predict_proba(x))
            return out
        if hasattr(estimator, "predict"):
            y = np.asarray(estimator.predict(x), dtype=np.float64)
            # skl2onnx returns one column per target, [n, 1] for a single target.
            return {"variable": y[:, None] if y.ndim == 1 else y}
        return {"variable": _tensor(estimator.transform(x))}

    def close(self) -> None:
        self._estimator = None


def _tensor(value: Any) -> np.ndarray:
    """A dense array the tensor format can hold (str labels become str items)."""
    if hasattr(value, "toarray"):  # scipy sparse, e.g. from a vectorizer
        value = value.toarray()
    array = np.asarray(value)
    if array.dtype.kind in "US":
        return array.astype(object)
    return array


class SklearnBackend:
    name = "sklearn"

    def load(self, blob: bytes, info: ModelInfo, options: BackendOptions) -> SklearnModel:
        fmt = info.format or "skops"
        if fmt in SAFE_FORMATS:
            estimator = _load_skops(blob, info, options)
        elif fmt in UNSAFE_FORMATS:
            estimator = _load_unsafe(blob, info, options)
        else:
            raise ValueError(
                f"format {fmt!r} is not one the sklearn backend reads: "
                f"{', '.join(SAFE_FORMATS + UNSAFE_FORMATS)}"
            )
        return SklearnModel(estimator)
