"""PyTorch backend: TorchScript archives, torch.export programs and TorchScript source.

Formats (``FORMAT`` at MODELSTORE):

- ``torchscript`` (the default): a ``torch.jit.save`` archive. Its forward
  schema names the inputs but not their dtypes or shapes; declared INPUT
  specs fill those in.
- ``pt2``: a ``torch.export.save`` program, which carries its full signature.
- ``torchscript-source``: TorchScript source text with one or more functions,
  as RedisAI's SCRIPTSTORE; ``META {"entry": "fn"}`` picks the one to run.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.export.graph_signature import OutputKind
from torch.export.passes import move_to_device_pass
from torch.export.pt2_archive import constants as pt2_archive
from torch.utils import _pytree as pytree

from inferis.client.protocol.errors import InferisError, InputError, UnsafeModelError
from inferis.client.protocol.tensor import numpy_dtype

from .archives import check_zip
from .base import ANY_DTYPE, UNSUPPORTED_DTYPE, BackendOptions, ModelInfo, TensorSpec, gpu_index

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "pt2", "torchscript-source")

# torch dtype -> wire dtype name (client/tensor.py). Anything else (complex,
# quantized, float8, ...) has no wire representation.
_WIRE_DTYPES: dict[torch.dtype, str] = {
    torch.float16: "float16",
    torch.float32: "float32",
    torch.float64: "float64",
    torch.bfloat16: "bfloat16",
    torch.int8: "int8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.uint8: "uint8",
    torch.uint16: "uint16",
    torch.uint32: "uint32",
    torch.uint64: "uint64",
    torch.bool: "bool",
}

_threads_configured = False


def _configure_threads(options: BackendOptions) -> None:
    """Apply the worker's thread budget once: torch's pools are per process."""
    global _threads_configured
    if _threads_configured:
        return
    _threads_configured = True
    if options.intra_op_threads > 0:  # 0 keeps torch's default, as for ONNX Runtime
        torch.set_num_threads(options.intra_op_threads)
    if options.inter_op_threads > 0:
        try:
            torch.set_num_interop_threads(options.inter_op_threads)
        except RuntimeError as exc:  # raised once any parallel work has started
            log.warning(
                "cannot set torch inter-op threads to %d (%s); keeping %d",
                options.inter_op_threads, exc, torch.get_num_interop_threads(),
            )


def _select_device(info: ModelInfo, options: BackendOptions) -> torch.device:
    if gpu_index(info.device) is None:
        return torch.device("cpu")
    # The model prefers a GPU; the worker's --device says which one it has.
    worker_gpu = gpu_index(options.device)
    if worker_gpu is not None and torch.cuda.is_available():
        return torch.device("cuda", worker_gpu)
    log.warning(
        "model %s v%s asks for %s but this worker serves %s (torch CUDA available: %s); "
        "running it on CPU", info.name, info.version, info.device, options.device,
        torch.cuda.is_available(),
    )
    return torch.device("cpu")


def to_torch(name: str, array: np.ndarray) -> torch.Tensor:
    """A request array as a CPU tensor (bfloat16 included)."""
    if array.dtype.kind in "USO":
        raise InputError(f"input {name} is a str tensor; torch has no string tensors")
    if not array.flags.writeable:
        # Request arrays are read-only views of the request's bytes. torch has no
        # read-only tensors, so a model writing to its input in place (x.relu_())
        # would write into memory Python treats as immutable: give it a copy.
        array = array.copy()
    if array.dtype.name == "bfloat16":
        # torch.from_numpy does not know ml_dtypes' bfloat16: reinterpret the bits.
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def to_numpy(name: str, value: Any) -> np.ndarray:
    """One model output as a numpy array with a wire dtype, or a ValueError naming it."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"output {name} is a {type(value).__name__}, not a Tensor")
    if value.is_quantized:
        raise ValueError(
            f"output {name} is a quantized tensor ({value.dtype}); "
            "return x.dequantize() from the model"
        )
    wire = _WIRE_DTYPES.get(value.dtype)
    if wire is None:
        raise ValueError(
            f"output {name} has dtype {value.dtype}, which the tensor format cannot carry; "
            f"supported: {', '.join(_WIRE_DTYPES.values())}"
        )
    tensor = value.detach()
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    tensor = tensor.cpu()
    if wire == "bfloat16":
        return tensor.view(torch.int16).numpy().view(numpy_dtype("bfloat16"))
    return tensor.numpy()


@dataclass(frozen=True)
class OutputLayout:
    """How a model's return value maps onto named outputs."""

    names: list[str]
    by_key: bool  # a dict return: each name is a key; otherwise its leaves in pytree order

    def collect(self, result: Any) -> dict[str, np.ndarray]:
        if self.by_key:
            if not isinstance(result, Mapping):
                raise ValueError(f"the model returned a {type(result).__name__}, not a dict")
            missing = [n for n in self.names if n not in result]
            if missing:
                raise ValueError(
                    f"the model's result has no key {missing[0]!r}; keys: {', '.join(result)}"
                )
            return {n: to_numpy(n, result[n]) for n in self.names}
        leaves = pytree.tree_leaves(result)
        if len(leaves) != len(self.names):
            raise ValueError(
                f"the model returned {len(leaves)} value(s), expected {len(self.names)} "
                f"({', '.join(self.names)})"
            )
        return {n: to_numpy(n, v) for n, v in zip(self.names, leaves, strict=True)}


def _default_names(count: int) -> list[str]:
    return [f"output_{i}" for i in range(count)]


class TorchModel:
    def __init__(
        self,
        call: Callable[[dict[str, torch.Tensor]], Any],
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        layout: OutputLayout,
        device: torch.device,
    ) -> None:
        self._call: Callable[[dict[str, torch.Tensor]], Any] | None = call
        self.inputs = inputs
        self.outputs = outputs
        self._layout = layout
        self._device = device
        self.device = "CPU" if device.type == "cpu" else f"GPU:{device.index or 0}"

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._call is None:
            raise RuntimeError("the model was closed")
        tensors = {n: to_torch(n, a).to(self._device) for n, a in feed.items()}
        try:
            with torch.inference_mode():
                result = self._call(tensors)
        except torch.jit.Error as exc:
            # A TorchScript error carries a traceback of dozens of lines (code the
            # user never wrote, mostly); the error itself is its last line.
            log.debug("TorchScript error: %s", exc)
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise RuntimeError(lines[-1] if lines else "TorchScript error") from None
        return self._layout.collect(result)

    def close(self) -> None:
        self._call = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


# --- torchscript and torchscript-source: the schema gives names and arity only --


def _is_tensor_type(t: Any) -> bool:
    return isinstance(t, torch.TensorType)


def _script_inputs(schema: torch.FunctionSchema, is_method: bool) -> list[TensorSpec]:
    specs = []
    for arg in schema.arguments[1 if is_method else 0 :]:
        if _is_tensor_type(arg.type):
            specs.append(TensorSpec(arg.name, ANY_DTYPE, None))
        elif not arg.has_default_value():
            # check_input turns this into an InputError naming the argument.
            specs.append(TensorSpec(arg.name, f"{UNSUPPORTED_DTYPE}{arg.type}", None))
        # a non-tensor argument with a default keeps its default
    return specs


def _leaf_count(t: Any, what: str) -> int | None:
    """Tensors a return type holds once flattened; None when only a run can tell."""
    if isinstance(t, torch.TupleType):
        counts = [_leaf_count(e, what) for e in t.elements()]
        return None if None in counts else sum(c for c in counts if c is not None)
    if isinstance(t, torch.ListType):
        _leaf_count(t.getElementType(), what)
        return None
    if not _is_tensor_type(t):
        raise ValueError(
            f"{what} returns {t}: a model must return Tensors (alone, in tuples or lists, "
            "or as a Dict[str, Tensor])"
        )
    return 1


def _script_layout(return_type: Any, declared: list[str], what: str) -> OutputLayout:
    if isinstance(return_type, torch.DictType):
        if not (
            isinstance(return_type.getKeyType(), torch.StringType)
            and _is_tensor_type(return_type.getValueType())
        ):
            raise ValueError(f"{what} returns {return_type}; a dict must be Dict[str, Tensor]")
        if not declared:
            raise ValueError(
                f"{what} returns {return_type}, whose keys are only known when it runs; "
                "declare them as OUTPUT specs at store time"
            )
        return OutputLayout(declared, by_key=True)
    count = _leaf_count(return_type, what)
    if count is None:
        if not declared:
            raise ValueError(
                f"{what} returns {return_type}, whose length is only known when it runs; "
                "declare one OUTPUT spec per tensor at store time"
            )
        return OutputLayout(declared, by_key=False)
    if declared and len(declared) != count:
        raise ValueError(
            f"{what} returns {count} tensor(s) ({return_type}) but {len(declared)} output(s) "
            f"were declared ({', '.join(declared)})"
        )
    return OutputLayout(declared or _default_names(count), by_key=False)


def _returns(schema: torch.FunctionSchema) -> Any:
    if len(schema.returns) != 1:  # a schema with several returns is a tuple
        return torch.TupleType([r.type for r in schema.returns])
    return schema.returns[0].type


def _declared_outputs(info: ModelInfo, names: list[str]) -> list[TensorSpec]:
    """Output specs: what was declared at store time, else unknown dtype and shape."""
    given = {s.name: s for s in info.outputs}
    return [given.get(n, TensorSpec(n, ANY_DTYPE, None)) for n in names]


# --- archives: say what a blob is when it is not what its FORMAT claims ------

_ARCHIVE_KINDS = {"torchscript": "a TorchScript archive", "pt2": "a torch.export program"}
_MISMATCH = {
    "torchscript": "the blob is a TorchScript archive: store it with FORMAT torchscript",
    "pt2": "the blob is a torch.export program: store it with FORMAT pt2",
    "pickle": (
        "the blob is a torch.save pickle, which the worker does not load: store "
        "torch.jit.script(model) (FORMAT torchscript) or a torch.export program (FORMAT pt2)"
    ),
    "other": "the blob is not a PyTorch archive (the zip torch.jit.save or torch.export.save "
    "writes)",
}


def _archive_kind(blob: bytes) -> str | None:
    """torchscript, pt2, pickle, other (not a zip); None for a zip we cannot tell."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            # Entries live under one top folder whose name varies ("archive/", "model/").
            entries = {n.split("/", 1)[-1] for n in archive.namelist()}
    except (zipfile.BadZipFile, ValueError):
        return "other"
    if "archive_format" in entries or any("exported_program" in e for e in entries):
        return "pt2"
    if "constants.pkl" in entries:
        return "torchscript"
    if "data.pkl" in entries:
        return "pickle"
    return None


def _open_archive(
    blob: bytes, want: str, load: Callable[[io.BytesIO], Any], options: BackendOptions
) -> Any:
    check_zip(blob, options, f"the {want} archive")
    kind = _archive_kind(blob)
    if kind is not None and kind != want:
        raise ValueError(_MISMATCH[kind])
    try:
        return load(io.BytesIO(blob))
    except InferisError:
        raise
    except Exception as exc:
        first_line = next(iter(str(exc).splitlines()), "")
        raise ValueError(
            f"cannot read {_ARCHIVE_KINDS[want]}: {type(exc).__name__}: {first_line}"
        ) from None


def _scripted_model(
    call: Callable[..., Any],
    schema: torch.FunctionSchema,
    info: ModelInfo,
    device: torch.device,
    what: str,
    is_method: bool,
) -> TorchModel:
    """A TorchScript module's forward or a script function, with its outputs laid out."""
    declared = [d.name for d in info.outputs]
    layout = _script_layout(_returns(schema), declared, what)
    return TorchModel(
        lambda feed: call(**feed),
        _script_inputs(schema, is_method=is_method),
        _declared_outputs(info, layout.names),
        layout,
        device,
    )


def _load_torchscript(
    blob: bytes, info: ModelInfo, device: torch.device, options: BackendOptions
) -> TorchModel:
    # TorchScript archives unpickle with torch's restricted unpickler: no Python code runs.
    module = _open_archive(
        blob, "torchscript", lambda f: torch.jit.load(f, map_location=device), options
    )
    module.eval()  # a module saved in training mode would run dropout and batch statistics
    if info.extra.get("optimize_for_inference") is True:
        # Fusions and MKLDNN layouts for this CPU: made at load, as TorchScript cannot
        # save them (engine/models/optimize.py freezes the archive at store time).
        module = torch.jit.optimize_for_inference(module)
    return _scripted_model(module, module.forward.schema, info, device, "forward", True)


def _load_source(
    blob: bytes, info: ModelInfo, device: torch.device, options: BackendOptions
) -> TorchModel:
    # TorchScript is a typed subset of Python compiled by torch itself: it cannot
    # import modules or call Python functions, so storing a script does not let
    # anyone run arbitrary Python on the worker (unlike pickle). It can still call
    # any torch operator, including ones that read files (torch.from_file), as can
    # any TorchScript archive: only let trusted clients write models to Redis.
    try:
        source = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"TorchScript source must be UTF-8 text ({exc})") from None
    unit = torch.jit.CompilationUnit(source)
    available = sorted(f.name for f in unit.get_functions())
    entry = info.extra.get("entry")
    if not isinstance(entry, str) or not entry:
        raise ValueError(
            'format torchscript-source needs META {"entry": "<function>"} naming the function '
            f"to run; the script defines: {', '.join(available) or 'no functions'}"
        )
    function = unit.find_function(entry)
    if function is None:
        raise ValueError(
            f"the script has no function {entry!r}; it defines: {', '.join(available)}"
        )
    if _takes_tensor_list(function.schema):
        return _redisai_entry(function, info, device, f"function {entry}")
    return _scripted_model(function, function.schema, info, device, f"function {entry}", False)


def _takes_tensor_list(schema: torch.FunctionSchema) -> bool:
    args = schema.arguments
    return bool(args) and isinstance(args[0].type, torch.ListType) and _is_tensor_type(
        args[0].type.getElementType())


def _redisai_entry(function: Any, info: ModelInfo, device: torch.device, what: str
                   ) -> TorchModel:
    """A RedisAI 1.2 entry point, ``def f(tensors: List[Tensor], keys: List[str],
    args: List[str])``: the inputs (as many as declared at store time) go in as the
    list, ``keys`` and ``args`` are the lists given in META."""
    arguments = function.schema.arguments
    if len(arguments) > 3 or not all(
        isinstance(a.type, torch.ListType) and isinstance(a.type.getElementType(), torch.StringType)
        for a in arguments[1:]
    ):
        raise ValueError(f"{what} takes {function.schema}; an entry point taking "
                         "List[Tensor] takes at most keys: List[str] and args: List[str] after it")
    if not info.inputs:
        raise ValueError(f"{what} takes List[Tensor]: declare its inputs (one INPUT per tensor "
                         "in the list) at store time")
    lists = []
    for name in ("keys", "args")[: len(arguments) - 1]:
        value = info.extra.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f'META "{name}" must be a list of strings for {what}')
        lists.append(list(value))
    order = [s.name for s in info.inputs]
    declared = [d.name for d in info.outputs]
    layout = _script_layout(_returns(function.schema), declared, what)
    return TorchModel(
        lambda feed: function([feed[n] for n in order], *lists),
        [TensorSpec(s.name, ANY_DTYPE, None) for s in info.inputs],
        _declared_outputs(info, layout.names), layout, device,
    )


# --- pt2: the exported program carries dtypes and shapes ---------------------


def _fake_spec(name: str, value: Any) -> TensorSpec:
    if not isinstance(value, torch.Tensor):
        return TensorSpec(name, f"{UNSUPPORTED_DTYPE}{type(value).__name__}", None)
    dtype = _WIRE_DTYPES.get(value.dtype, f"{UNSUPPORTED_DTYPE}{value.dtype}")
    # A symbolic dim (torch.export.Dim) is a SymInt: dynamic.
    shape = tuple(d if isinstance(d, int) else None for d in value.shape)
    return TensorSpec(name, dtype, shape)


def _pt2_layout(
    out_spec: pytree.TreeSpec, count: int, declared: list[str]
) -> tuple[OutputLayout, list[str]]:
    """The layout and the name of each flattened output, in program order."""
    children = out_spec.children() if out_spec.type is dict else []
    if out_spec.type is dict and all(c.is_leaf() for c in children):
        keys = [str(k) for k in out_spec.context]
        unknown = [n for n in declared if n not in keys]
        if unknown:
            raise ValueError(
                f"declared output {unknown[0]!r} is not a key of the program's result; "
                f"keys: {', '.join(keys)}"
            )
        return OutputLayout(declared or keys, by_key=True), keys
    if declared and len(declared) != count:
        raise ValueError(
            f"the program returns {count} tensor(s) but {len(declared)} output(s) were "
            f"declared ({', '.join(declared)})"
        )
    names = declared or _default_names(count)
    return OutputLayout(names, by_key=False), names


_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


@contextmanager
def _weights_only_unpickling() -> Iterator[None]:
    """Make every torch.load inside use weights_only=True, whatever its caller asks.

    torch.export.load unpickles some archive entries with weights_only=False (and
    retries sample inputs that way), which runs any code the archive carries.
    torch reads this variable on every torch.load call; workers are single-threaded.
    """
    previous = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = previous


def _pt2_code(blob: bytes) -> str | None:
    """What a .pt2 archive holds that would run as code when loaded, if anything."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            entries = [n.split("/", 1)[-1] for n in archive.namelist()]
    except (zipfile.BadZipFile, ValueError):
        return None  # not an archive: _open_archive says so
    if any(e.startswith(pt2_archive.AOTINDUCTOR_DIR) for e in entries):
        return "AOTInductor-compiled native code"
    opaque = pt2_archive.CONSTANTS_DIR + pt2_archive.OPAQUE_OBJ_FILENAME_PREFIX
    if any(e.startswith(opaque) for e in entries):
        return "pickled Python objects"
    return None


def _unsafe_pt2(info: ModelInfo, content: str) -> UnsafeModelError:
    return UnsafeModelError(
        f"model {info.name} v{info.version} (pt2) holds {content}, which can run code when "
        "loaded; the worker refuses it unless started with --trust-unsafe-formats"
    )


def _load_pt2(
    blob: bytes, info: ModelInfo, device: torch.device, options: BackendOptions
) -> TorchModel:
    if options.trust_unsafe_formats:
        program = _open_archive(blob, "pt2", torch.export.load, options)
    else:
        code = _pt2_code(blob)
        if code is not None:
            raise _unsafe_pt2(info, code)

        def load(f: io.BytesIO) -> Any:
            try:
                with _weights_only_unpickling():
                    return torch.export.load(f)
            except pickle.UnpicklingError as exc:
                found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
                what = f" ({found.group(1)})" if found else ""
                raise _unsafe_pt2(info, f"pickled objects beyond tensors{what}") from None

        program = _open_archive(blob, "pt2", load, options)
    if device.type != "cpu":
        program = move_to_device_pass(program, device)
    signature = program.graph_signature
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    input_names = list(signature.user_inputs)
    inputs = [_fake_spec(n, placeholders[n].meta.get("val")) for n in input_names]

    output_node = program.graph.output_node()
    values = [
        arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg
        for spec, arg in zip(signature.output_specs, output_node.args[0], strict=True)
        if spec.kind == OutputKind.USER_OUTPUT
    ]
    declared = [d.name for d in info.outputs]
    layout, flat_names = _pt2_layout(program.call_spec.out_spec, len(values), declared)
    by_name = {n: _fake_spec(n, v) for n, v in zip(flat_names, values, strict=True)}
    outputs = [by_name[n] for n in layout.names]

    module = program.module()
    in_spec = program.call_spec.in_spec

    def call(feed: dict[str, torch.Tensor]) -> Any:
        args, kwargs = pytree.tree_unflatten([feed[n] for n in input_names], in_spec)
        return module(*args, **kwargs)

    return TorchModel(call, inputs, outputs, layout, device)


_LOADERS: dict[str, Callable[[bytes, ModelInfo, torch.device, bool], TorchModel]] = {
    "torchscript": _load_torchscript,
    "pt2": _load_pt2,
    "torchscript-source": _load_source,
}


class TorchBackend:
    name = "torch"

    def load(self, blob: bytes, info: ModelInfo, options: BackendOptions) -> TorchModel:
        fmt = info.format or "torchscript"
        loader = _LOADERS.get(fmt)
        if loader is None:
            raise ValueError(
                f"backend torch has no format {fmt!r}; formats: {', '.join(FORMATS)}"
            )
        _configure_threads(options)
        return loader(blob, info, _select_device(info, options), options)

