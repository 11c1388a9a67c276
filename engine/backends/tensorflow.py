"""TensorFlow backend: SavedModel signatures and frozen GraphDefs (the RedisAI format).

FORMAT ``savedmodel`` (the default) takes a tar archive, plain or gzip, of a
SavedModel directory and serves one of its signatures. FORMAT ``graphdef``
takes a frozen ``tf.GraphDef``; it carries no signature, so the tensors to
feed and fetch are the INPUT/OUTPUT names declared at MODELSTORE.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .archives import extract_tar
from .base import UNSUPPORTED_DTYPE, BackendOptions, ModelInfo, TensorSpec, gpu_index
from .savedmodel import SAVED_MODEL_FILES
from .savedmodel import pack_saved_model as pack_saved_model  # re-exported for callers

# Must be set before TensorFlow's C++ runtime loads, or it logs every kernel choice.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"

# TensorFlow dtypes -> wire dtype names (client/tensor.py)
_WIRE_DTYPES: dict[tf.DType, str] = {
    tf.float16: "float16",
    tf.float32: "float32",
    tf.float64: "float64",
    tf.bfloat16: "bfloat16",
    tf.int8: "int8",
    tf.int16: "int16",
    tf.int32: "int32",
    tf.int64: "int64",
    tf.uint8: "uint8",
    tf.uint16: "uint16",
    tf.uint32: "uint32",
    tf.uint64: "uint64",
    tf.bool: "bool",
    tf.string: "str",
}
_UNSUPPORTED = UNSUPPORTED_DTYPE

# Thread pools can be sized only before TensorFlow initialises, so once per process.
_threads_configured = False


def _wire_dtype(dtype: tf.DType) -> str:
    return _WIRE_DTYPES.get(dtype, _UNSUPPORTED + dtype.name)


def _shape(shape: tf.TensorShape) -> tuple[int | None, ...] | None:
    return None if shape.rank is None else tuple(shape.as_list())


def _spec(name: str, dtype: tf.DType, shape: tf.TensorShape) -> TensorSpec:
    return TensorSpec(name, _wire_dtype(dtype), _shape(shape))


def _natural_key(name: str) -> list[Any]:
    """Sort 'output_2' before 'output_10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _refuse_unsupported_outputs(outputs: Sequence[TensorSpec]) -> None:
    for spec in outputs:
        if spec.dtype.startswith(_UNSUPPORTED):
            raise ValueError(
                f"output {spec.name} has dtype {spec.dtype[len(_UNSUPPORTED):]}, which inferis "
                f"tensors cannot carry; supported: {', '.join(_WIRE_DTYPES.values())}"
            )


def _output_array(name: str, value: Any) -> np.ndarray:
    """A fetched value as numpy; tf.string comes back as bytes and is decoded to str."""
    array = np.asarray(value)
    if array.dtype.kind not in "OS":
        return array
    try:
        items = [x.decode("utf-8") if isinstance(x, bytes) else x for x in array.ravel().tolist()]
    except UnicodeDecodeError as exc:
        raise ValueError(f"output {name} holds bytes that are not UTF-8 text: {exc}") from None
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(array.shape)


def _configure_threads(options: BackendOptions) -> None:
    global _threads_configured
    if _threads_configured:
        return
    _threads_configured = True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(options.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(options.inter_op_threads)
    except RuntimeError:
        log.warning(
            "TensorFlow was initialised before its thread pools could be sized; it keeps "
            "intra-op %d / inter-op %d threads instead of %d / %d",
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
            options.intra_op_threads, options.inter_op_threads,
        )


def _worker_device(tf_device: str) -> str:
    """'/GPU:1' -> 'GPU:1', '/CPU:0' -> 'CPU' (the names the worker reports)."""
    return "CPU" if tf_device.startswith("/CPU") else tf_device.lstrip("/")


def _device(info: ModelInfo, options: BackendOptions) -> str:
    """'/GPU:N' when the model prefers a GPU and this worker has one; '/CPU:0' otherwise."""
    if gpu_index(info.device) is None:
        return "/CPU:0"
    worker_gpu = gpu_index(options.device)
    gpus = tf.config.list_physical_devices("GPU")
    if worker_gpu is not None and worker_gpu < len(gpus):
        return f"/GPU:{worker_gpu}"
    log.warning(
        "model %s v%s asks for %s but this worker serves %s (TensorFlow sees %d GPU(s)); "
        "running it on CPU", info.name, info.version, info.device, options.device, len(gpus),
    )
    return "/CPU:0"


# ---------------------------------------------------------------------------
# SavedModel


def _extract(blob: bytes, target: Path, options: BackendOptions) -> None:
    try:
        extract_tar(blob, target, options, "the SavedModel archive")
    except tarfile.TarError as exc:
        # tarfile.open lists one failure per compression tried; the first line says enough.
        reason = str(exc).splitlines()[0].rstrip(":")
        raise ValueError(
            "FORMAT savedmodel takes a tar archive (plain or gzip) of a SavedModel directory, "
            f"e.g. `tar -C savedmodel_dir -cf model.tar .`; this blob is not one ({reason})"
        ) from None


def _saved_model_root(folder: Path) -> Path:
    """The SavedModel at the archive root, or inside its one top-level folder."""
    if any((folder / f).is_file() for f in SAVED_MODEL_FILES):
        return folder
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and any((entries[0] / f).is_file() for f in SAVED_MODEL_FILES):
        return entries[0]
    found = ", ".join(sorted(p.name for p in entries)) or "nothing"
    raise ValueError(
        "the archive has no saved_model.pb at its root or inside one top-level folder "
        f"(its top level holds: {found})"
    )


class SavedModelModel:
    """One signature of a SavedModel unpacked into a private temporary directory."""

    def __init__(
        self, blob: bytes, info: ModelInfo, device: str, options: BackendOptions
    ) -> None:
        self.device = _worker_device(device)
        self._dir = tempfile.mkdtemp(prefix="inferis-tf-")
        # Removes the directory even if close() is never called (e.g. at exit).
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, True)
        try:
            _extract(blob, Path(self._dir), options)
            root = _saved_model_root(Path(self._dir))
            self._device = device
            with tf.device(device):
                self._loaded = tf.saved_model.load(str(root))
            self._fn = self._signature(info.extra.get("signature", DEFAULT_SIGNATURE))
            _, kwargs = self._fn.structured_input_signature
            outputs = self._fn.structured_outputs
            if not isinstance(outputs, Mapping):
                raise ValueError("the signature does not return a dict of named tensors")
            # A loaded signature's dict order is not stable across loads; positional
            # binding needs one, so inputs and outputs are listed sorted by name.
            self.outputs = [
                _spec(name, outputs[name].dtype, outputs[name].shape)
                for name in sorted(outputs, key=_natural_key)
            ]
            _refuse_unsupported_outputs(self.outputs)
        except BaseException:
            self._cleanup()
            raise
        self.inputs = [
            _spec(name, kwargs[name].dtype, kwargs[name].shape)
            for name in sorted(kwargs, key=_natural_key)
        ]
        self._input_dtypes = {name: s.dtype for name, s in kwargs.items()}

    def _signature(self, name: str) -> Any:
        signatures = self._loaded.signatures
        if name in signatures:
            return signatures[name]
        available = ", ".join(sorted(signatures)) or "none (save it with signatures=...)"
        raise ValueError(f"the SavedModel has no signature {name!r}; available: {available}")

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with tf.device(self._device):
            tensors = {
                name: tf.convert_to_tensor(array, dtype=self._input_dtypes[name])
                for name, array in feed.items()
            }
            results = self._fn(**tensors)
        return {name: _output_array(name, value.numpy()) for name, value in results.items()}

    def close(self) -> None:
        self._fn = None
        self._loaded = None
        self._cleanup()


# ---------------------------------------------------------------------------
# Frozen GraphDef


def _tensor_name(name: str) -> str:
    """'x' -> 'x:0'; 'x:1' stays."""
    return name if re.fullmatch(r".+:\d+", name) else f"{name}:0"


def _graph_sinks(graph: tf.Graph) -> list[str]:
    """Ops nothing consumes: the likely outputs, named in errors."""
    consumed = {t.op.name for op in graph.get_operations() for t in op.inputs}
    return [
        op.name for op in graph.get_operations()
        if op.name not in consumed and op.outputs and op.type != "NoOp"
    ]


def _dims(shape: tuple[int | None, ...]) -> list[int]:
    return [-1 if d is None else d for d in shape]


def _merge_shape(
    label: str, graph: tuple[int | None, ...] | None, declared: Sequence[Any] | None
) -> tuple[int | None, ...] | None:
    """The graph's shape with its unknown dims filled from the declaration."""
    wanted = None if declared is None else tuple(declared)
    if graph is None or wanted is None:
        return wanted if graph is None else graph
    if len(graph) != len(wanted):
        raise ValueError(
            f"{label} is declared with rank {len(wanted)}, the graph has {list(graph)}"
        )
    merged = []
    for g, w in zip(graph, wanted, strict=True):
        if g is not None and w is not None and g != w:
            raise ValueError(
                f"{label} is declared with shape {_dims(wanted)}, the graph has "
                f"{list(graph)}"
            )
        merged.append(g if g is not None else w)
    return tuple(merged)


def _graph_spec(graph: tf.Graph, declared: TensorSpec, kind: str) -> TensorSpec:
    name = declared.name
    try:
        tensor = graph.get_tensor_by_name(_tensor_name(name))
    except (KeyError, ValueError):
        if kind == "INPUT":
            hint = "placeholders: " + (", ".join(
                op.name for op in graph.get_operations() if op.type == "Placeholder"
            ) or "none")
        else:
            hint = "unconsumed nodes: " + (", ".join(_graph_sinks(graph)) or "none")
        raise ValueError(f"{kind} {name!r} is not a tensor of the graph ({hint})") from None
    spec = _spec(name, tensor.dtype, tensor.shape)
    declared_dtype = declared.dtype
    if declared_dtype and not spec.dtype.startswith(_UNSUPPORTED) and declared_dtype != spec.dtype:
        raise ValueError(
            f"{kind} {name!r} is declared {declared_dtype} but the graph's tensor is {spec.dtype}"
        )
    shape = _merge_shape(f"{kind} {name!r}", spec.shape, declared.shape)
    return TensorSpec(name, spec.dtype, shape)


class GraphDefModel:
    """A frozen graph run by a v1 Session.

    ``Session.make_callable`` builds the feed/fetch plumbing once; a call then
    costs about 90 us on CPU, against about 470 us for a pruned
    ``wrap_function`` (each call goes through eager dispatch and tensor
    conversion), and small repeated calls are the common serving case.
    """

    def __init__(self, blob: bytes, info: ModelInfo, options: BackendOptions, device: str) -> None:
        self.device = _worker_device(device)
        if not info.inputs or not info.outputs:
            raise ValueError(
                "FORMAT graphdef needs the tensors to feed and fetch: INPUT and OUTPUT "
                "declarations are required for graphdef (INPUT <name> <dtype> <shape> ... "
                "OUTPUT <name> <dtype> <shape> at MODELSTORE; inputs=/outputs= in the SDK)"
            )
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(blob)
        except Exception as exc:  # protobuf's DecodeError
            raise ValueError(f"the blob is not a serialized tf.GraphDef (.pb): {exc}") from None
        if not graph_def.node:
            raise ValueError("the blob parses as an empty tf.GraphDef; is it a frozen .pb?")
        graph = tf.Graph()
        with graph.as_default(), tf.device(device):
            tf.compat.v1.import_graph_def(graph_def, name="")
        self.inputs = [_graph_spec(graph, d, "INPUT") for d in info.inputs]
        self.outputs = [_graph_spec(graph, d, "OUTPUT") for d in info.outputs]
        _refuse_unsupported_outputs(self.outputs)
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=options.intra_op_threads,
            inter_op_parallelism_threads=options.inter_op_threads,
            allow_soft_placement=True,  # ops without a GPU kernel fall back to CPU
        )
        if device.startswith("/CPU"):
            config.device_count["GPU"] = 0
        self._session = tf.compat.v1.Session(graph=graph, config=config)
        feeds = [graph.get_tensor_by_name(_tensor_name(s.name)) for s in self.inputs]
        fetches = [graph.get_tensor_by_name(_tensor_name(s.name)) for s in self.outputs]
        self._call = self._session.make_callable(fetches, feeds)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._call(*(feed[s.name] for s in self.inputs))
        return {
            s.name: _output_array(s.name, v) for s, v in zip(self.outputs, values, strict=True)
        }

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = None
        self._call = None


class TensorFlowBackend:
    name = "tensorflow"

    def load(
        self, blob: bytes, info: ModelInfo, options: BackendOptions
    ) -> SavedModelModel | GraphDefModel:
        _configure_threads(options)
        fmt = info.format or "savedmodel"
        if fmt == "savedmodel":
            return SavedModelModel(blob, info, _device(info, options), options)
        if fmt == "graphdef":
            return GraphDefModel(blob, info, options, _device(info, options))
        raise ValueError(
            f"backend tensorflow has no format {fmt!r}; use savedmodel (a tar of a SavedModel "
            "directory) or graphdef (a frozen GraphDef)"
        )
