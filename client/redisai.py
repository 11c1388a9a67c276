"""redisai-py's ``Client`` over inferis, for code written against RedisAI (end of
life): the same constructor, method names, arguments and return values for
tensors and models, so that migrating is changing an import.

``from inferis.client.redisai import Client`` instead of ``from redisai import
Client``. What it maps, and what it does not (scripts, DAGs, TFLite), is in
docs/REDISAI-MIGRATION.md. Errors are raised as redisai-py raises them:
``ValueError``/``TypeError`` for bad arguments before anything is sent, and
``redis.ResponseError`` (with inferis's ``CODE message``) for what Redis or a
worker refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
import redis

from . import sync
from .protocol import keys
from .protocol.errors import InferisError, InputError

# redisai-py dtype names (lower-cased) -> numpy, and numpy -> RedisAI's names.
_DTYPES = {
    "float": "float32", "float32": "float32", "double": "float64", "float64": "float64",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "bool": "bool",
}
_AI_NAMES = {"float32": "FLOAT", "float64": "DOUBLE", "bool": "BOOL"}
# RedisAI backend -> inferis backend and format.
_BACKENDS = {"TORCH": ("torch", "torchscript"), "ONNX": ("onnx", "onnx"),
             "TF": ("tensorflow", "graphdef")}
_AI_BACKEND = {"torch": "TORCH", "onnx": "ONNX", "tensorflow": "TF"}


def _ai_dtype(dtype: np.dtype) -> str:
    return _AI_NAMES.get(dtype.name, dtype.name.upper())


def _model_name(key: str) -> str:
    """RedisAI keys often read ``model:mnist``; model names take no ``:``."""
    name = key.replace(":", ".").replace("/", ".")
    if not keys.is_model_name(name):
        raise ValueError(f"model key {key!r} must be letters, digits, _ . - : / "
                         "(inferis stores it as a model name)")
    return name


def _refused(exc: InferisError) -> redis.ResponseError:
    return redis.ResponseError(f"{exc.code} {exc.message}")


class Client(redis.Redis):
    """A Redis client with RedisAI's model and tensor commands (as redisai-py's)."""

    def __init__(self, debug: bool = False, enable_postprocess: bool = True, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.debug = debug
        self.enable_postprocess = enable_postprocess
        opts = self.connection_pool.connection_kwargs
        auth = ""
        if opts.get("password"):
            auth = f"{quote(opts.get('username') or '')}:{quote(opts['password'])}@"
        url = f"redis://{auth}{opts.get('host', 'localhost')}:{opts.get('port', 6379)}/" \
              f"{opts.get('db', 0)}"
        self._inferis = sync.Client(url)

    def close(self) -> None:
        self._inferis.close()
        super().close()

    def _say(self, *words: Any) -> None:
        if self.debug:  # redisai-py prints each command it sends
            print(*words)

    # ------------------------------------------------------------ tensors

    def tensorset(self, key: str, tensor: np.ndarray | Sequence[Any],
                  shape: Sequence[int] | None = None, dtype: str | None = None) -> str:
        if isinstance(tensor, np.ndarray):
            if tensor.dtype.name not in _AI_NAMES and tensor.dtype.name not in _DTYPES:
                raise TypeError(f"RedisAI doesn't support tensors of type {tensor.dtype}")
            array = tensor
        elif isinstance(tensor, list | tuple):
            if dtype is None:
                raise TypeError("tensorset() missing argument 'dtype' or value of 'dtype' is None")
            name = _DTYPES.get(str(dtype).lower())
            if name is None:
                raise TypeError(f"RedisAI doesn't support tensors of type {dtype}")
            array = np.asarray(tensor, dtype=name).reshape(shape or (len(tensor),))
        else:
            raise TypeError(f"tensor must be a numpy array, a list or a tuple, got "
                            f"{type(tensor).__name__}")
        self._say("TENSORSET", key, _ai_dtype(array.dtype), *array.shape)
        try:
            self._inferis.tensorset(key, array)
        except InferisError as exc:
            raise _refused(exc) from None
        return "OK"

    def tensorget(self, key: str, as_numpy: bool = True, as_numpy_mutable: bool = False,
                  meta_only: bool = False) -> Any:
        self._say("TENSORGET", key)
        try:
            array = self._inferis.tensorget(key)
        except InferisError as exc:
            raise _refused(exc) from None
        meta = {"dtype": _ai_dtype(array.dtype), "shape": list(array.shape)}
        if meta_only:
            return meta
        if as_numpy_mutable:
            return np.array(array)
        if as_numpy:
            array.setflags(write=False)
            return array
        values = array.reshape(-1).tolist()
        if array.dtype.kind != "f":  # RedisAI answers integers (booleans as 1 and 0)
            values = [int(v) for v in values]
        return {**meta, "values": values}

    # ------------------------------------------------------------ models

    def modelstore(self, key: str, backend: str, device: str, data: bytes,
                   batch: int | None = None, minbatch: int | None = None,
                   minbatchtimeout: int | None = None, tag: str | None = None,
                   inputs: str | Sequence[str] | None = None,
                   outputs: str | Sequence[str] | None = None) -> str:
        if not key:
            raise ValueError("Model name was not given")
        upper = str(backend).upper()
        if upper not in ("TF", "TFLITE", "TORCH", "ONNX"):
            raise ValueError(f"Backend not allowed: {backend}")
        if str(device).split(":")[0].upper() not in ("CPU", "GPU"):
            raise ValueError(f"Device not allowed: {device}")
        if minbatch is not None and batch is None:
            raise ValueError("Minbatch is not allowed without batch")
        if minbatchtimeout is not None and minbatch is None:
            raise ValueError("Minbatchtimeout is not allowed without minbatch")
        if upper == "TF" and (inputs is None or outputs is None):
            raise ValueError("Require keyword arguments inputs and outputs for TF models")
        if upper != "TF" and (inputs is not None or outputs is not None):
            raise ValueError("Inputs and outputs keywords should not be specified for this backend")
        if upper == "TFLITE":
            raise ValueError("TFLITE models are not served by inferis; convert the model to "
                             "ONNX (tf2onnx) and store it with backend ONNX")
        if upper == "TF":
            raise ValueError("TF graphdef models need each input's dtype and shape, which "
                             "RedisAI never asked for: store them with inferis's "
                             "Client.modelstore(..., inputs=[{'name','dtype','shape'}], ...)")
        name = _model_name(key)
        backend_name, fmt = _BACKENDS[upper]
        options: dict[str, Any] = {"device": str(device).upper(), "format": fmt,
                                   "tags": {"tag": tag or "", "redisai_device": str(device)}}
        if batch:
            options["batch"] = (int(batch), int(minbatchtimeout or 0) * 1000)
        self._say("MODELSTORE", key, upper, device)
        try:
            self._inferis.modelstore(name, backend_name, bytes(data), **options)
        except InferisError as exc:
            raise _refused(exc) from None
        return "OK"

    def modelset(self, key: str, backend: str, device: str, data: bytes,
                 batch: int | None = None, minbatch: int | None = None,
                 tag: str | None = None, inputs: Any = None, outputs: Any = None) -> str:
        warnings.warn("modelset is deprecated: use modelstore", DeprecationWarning,
                      stacklevel=2)
        return self.modelstore(key, backend, device, data, batch, minbatch, None, tag,
                               inputs, outputs)

    def modelget(self, key: str, meta_only: bool = False) -> dict[str, Any]:
        name = _model_name(key)
        try:
            if meta_only:
                info = self._inferis.modelget(name)
                blob = None
            else:
                info, blob = self._inferis.modelget(name, blob=True)
        except InferisError as exc:
            raise _refused(exc) from None
        out = {
            "backend": _AI_BACKEND.get(info.backend, info.backend.upper()),
            "device": info.tags.get("redisai_device", info.device.lower()),
            "tag": info.tags.get("tag", ""),
            "batchsize": info.batching.max_batch_size,
            "minbatchsize": 0,
            "minbatchtimeout": info.batching.max_queue_delay_us // 1000,
            "inputs": [s.name for s in info.inputs],
            "outputs": [s.name for s in info.outputs],
        }
        if blob is not None:
            out["blob"] = blob
        return out

    def modeldel(self, key: str) -> str:
        try:
            self._inferis.modeldel(_model_name(key))
        except InferisError as exc:
            raise _refused(exc) from None
        return "OK"

    def modelexecute(self, key: str, inputs: str | Sequence[str],
                     outputs: str | Sequence[str], timeout: int | None = None) -> str:
        if key is None or inputs is None or outputs is None:
            raise ValueError("Missing required arguments for model execute command")
        ins = [inputs] if isinstance(inputs, str) else list(inputs)
        outs = [outputs] if isinstance(outputs, str) else list(outputs)
        name = _model_name(key)
        self._say("MODELEXECUTE", key, "INPUTS", len(ins), *ins, "OUTPUTS", len(outs), *outs)
        try:
            tags = {keys.partition_of(k) for k in (*ins, *outs)}
            if len(tags) == 1 and None not in tags and tags <= set(self._inferis.partitions):
                # Keys under one partition tag: one MODELRUN, the worker reads and writes them.
                self._inferis.modelexecute(name, ins, outs, timeout_ms=timeout)
                return "OK"
            # RedisAI keys anywhere (any slot): read them, run, write the outputs.
            arrays = [self._inferis.tensorget(k) for k in ins]
            result = self._inferis.run(name, arrays, timeout_ms=timeout).raise_for_error()
            produced = list(result.outputs.values())
            if len(produced) < len(outs):
                raise InputError(
                    f"model {key} returned {len(produced)} outputs, {len(outs)} asked")
            for out_key, value in zip(outs, produced, strict=False):
                self._inferis.tensorset(out_key, value)
        except InferisError as exc:
            raise _refused(exc) from None
        return "OK"

    def modelrun(self, key: str, inputs: str | Sequence[str],
                 outputs: str | Sequence[str]) -> str:
        warnings.warn("modelrun is deprecated: use modelexecute", DeprecationWarning,
                      stacklevel=2)
        return self.modelexecute(key, inputs, outputs)

    def modelscan(self) -> list[list[str]]:
        warnings.warn("Experimental: the model scan gives names and tags", UserWarning,
                      stacklevel=2)
        out = []
        for name in self._inferis.modellist():
            try:
                tag = self._inferis.modelget(name).tags.get("tag", "")
            except InferisError:
                continue
            out.append([name, tag])
        return out

    # ------------------------------------------------------------ stats

    def infoget(self, key: str) -> dict[str, Any]:
        name = _model_name(key)
        try:
            info = self._inferis.modelget(name)
            stats = self._inferis.modelstats(name)
        except InferisError as exc:
            raise _refused(exc) from None
        return {
            "key": key, "type": "MODEL",
            "backend": _AI_BACKEND.get(info.backend, info.backend.upper()),
            "device": info.tags.get("redisai_device", info.device.lower()),
            "tag": info.tags.get("tag", ""),
            "duration": stats.get("run_us", 0), "samples": stats.get("requests", 0),
            "calls": stats.get("requests", 0), "errors": stats.get("errors", 0),
        }

    def inforeset(self, key: str) -> str:
        """Zero the model's counters (workers count on from there)."""
        self.delete(keys.model_key(_model_name(key), "stats"))
        return "OK"
