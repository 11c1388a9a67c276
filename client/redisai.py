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

import contextlib
import json
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


def _wire(array: np.ndarray) -> str:
    return {"bool": "bool"}.get(array.dtype.name, array.dtype.name)


def _model_name(key: str) -> str:
    """RedisAI keys often read ``model:mnist``; model names take no ``:``."""
    name = key.replace(":", ".").replace("/", ".")
    if not keys.is_model_name(name):
        raise ValueError(f"model key {key!r} must be letters, digits, _ . - : / "
                         "(inferis stores it as a model name)")
    return name


def _refused(exc: InferisError) -> redis.ResponseError:
    return redis.ResponseError(f"{exc.code} {exc.message}")


def _as_array(tensor: Any, shape: Sequence[int] | None, dtype: str | None) -> np.ndarray:
    """redisai-py's tensorset input: a numpy array, or a list/tuple with a dtype."""
    if isinstance(tensor, np.ndarray):
        if tensor.dtype.name not in _AI_NAMES and tensor.dtype.name not in _DTYPES:
            raise TypeError(f"RedisAI doesn't support tensors of type {tensor.dtype}")
        return tensor
    if isinstance(tensor, list | tuple):
        if dtype is None:
            raise TypeError("tensorset() missing argument 'dtype' or value of 'dtype' is None")
        name = _DTYPES.get(str(dtype).lower())
        if name is None:
            raise TypeError(f"RedisAI doesn't support tensors of type {dtype}")
        return np.asarray(tensor, dtype=name).reshape(shape or (len(tensor),))
    raise TypeError(f"tensor must be a numpy array, a list or a tuple, got "
                    f"{type(tensor).__name__}")


def _present(array: np.ndarray, as_numpy: bool, as_numpy_mutable: bool, meta_only: bool
             ) -> Any:
    """redisai-py's tensorget answer."""
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


def _names(value: Sequence[str] | str | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


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
        self._scripts: dict[str, dict[tuple[Any, ...], int]] = {}

    def close(self) -> None:
        self._inferis.close()
        super().close()

    def _say(self, *words: Any) -> None:
        if self.debug:  # redisai-py prints each command it sends
            print(*words)

    # ------------------------------------------------------------ tensors

    def tensorset(self, key: str, tensor: np.ndarray | Sequence[Any],
                  shape: Sequence[int] | None = None, dtype: str | None = None) -> str:
        array = _as_array(tensor, shape, dtype)
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
        return _present(array, as_numpy, as_numpy_mutable, meta_only)

    def dag(self, load: Sequence[str] | str | None = None,
            persist: Sequence[str] | str | None = None, routing: str | None = None,
            timeout: int | None = None, readonly: bool = False) -> Dag:
        """A DAG as redisai-py builds one: tensors ``load``-ed from Redis, the ops run
        in order on tensors held here (models and scripts run by inferis), and the
        ``persist`` ones written back by :meth:`Dag.execute`."""
        if load is None and persist is None and routing is None:
            warnings.warn("Creating Dag without any of LOAD, PERSIST and ROUTING arguments is "
                          "allowed only in deprecated AI.DAGRUN or AI.DAGRUN_RO commands",
                          DeprecationWarning, stacklevel=2)
        if readonly and persist:
            raise RuntimeError("READONLY requests can not save any tensors")
        return Dag(self, load, persist, timeout)

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

    # ------------------------------------------------------------ scripts

    def scriptstore(self, key: str, device: str, script: str,
                    entry_points: str | Sequence[str], tag: str | None = None) -> str:
        """Keep a TorchScript script (RedisAI 1.2: entry points taking ``tensors:
        List[Tensor], keys: List[str], args: List[str]``); each entry point, input
        count and keys/args it is executed with becomes a version of a torch model
        named after ``key`` (stored on first use, then cached by content)."""
        if key is None or script is None or entry_points is None:
            raise ValueError("Missing required arguments for script store command")
        if str(device).split(":")[0].upper() not in ("CPU", "GPU"):
            raise ValueError(f"Device not allowed: {device}")
        if not isinstance(script, str):
            raise TypeError("script must be the TorchScript source as str")
        points = [entry_points] if isinstance(entry_points, str) else list(entry_points)
        name = _model_name(key)
        self.hset(keys.model_key(name, "redisai_script"), mapping={
            "source": script, "device": str(device), "tag": tag or "",
            "entry_points": ",".join(points)})
        self._scripts.pop(name, None)
        return "OK"

    def scriptset(self, key: str, device: str, script: str, tag: str | None = None) -> str:
        warnings.warn("scriptset is deprecated: use scriptstore", DeprecationWarning,
                      stacklevel=2)
        return self.scriptstore(key, device, script, [], tag)

    def scriptget(self, key: str, meta_only: bool = False) -> dict[str, Any]:
        record = self.hgetall(keys.model_key(_model_name(key), "redisai_script"))
        if not record:
            raise redis.ResponseError(f"EMODEL script key {key} is empty")
        out = {"device": record[b"device"].decode(), "tag": record[b"tag"].decode(),
               "entry_points": [p for p in record[b"entry_points"].decode().split(",") if p]}
        if not meta_only:
            out["source"] = record[b"source"].decode()
        return out

    def scriptdel(self, key: str) -> str:
        name = _model_name(key)
        if not self.delete(keys.model_key(name, "redisai_script")):
            raise redis.ResponseError(f"EMODEL script key {key} is empty")
        self._scripts.pop(name, None)
        with contextlib.suppress(InferisError):  # never executed: no versions
            self._inferis.modeldel(name)
        return "OK"

    def scriptexecute(self, key: str, function: str, keys: Sequence[str] | None = None,
                      inputs: Sequence[str] | None = None, args: Sequence[str] | None = None,
                      outputs: Sequence[str] | None = None, timeout: int | None = None) -> str:
        if function is None or (keys is None and inputs is None):
            raise ValueError("Missing required arguments for script execute command")
        name = _model_name(key)
        ins = [inputs] if isinstance(inputs, str) else list(inputs or ())
        outs = [outputs] if isinstance(outputs, str) else list(outputs or ())
        key_list, arg_list = [str(k) for k in keys or ()], [str(a) for a in args or ()]
        try:
            arrays = [self._inferis.tensorget(k) for k in ins]
            version = self._script_version(name, key, function, arrays, key_list, arg_list)
            result = self._inferis.run(name, arrays, version=version,
                                       timeout_ms=timeout).raise_for_error()
            for out_key, value in zip(outs, result.outputs.values(), strict=False):
                self._inferis.tensorset(out_key, value)
        except InferisError as exc:
            raise _refused(exc) from None
        return "OK"

    def _script_version(self, name: str, key: str, function: str, arrays: list[np.ndarray],
                        key_list: list[str], arg_list: list[str]) -> int:
        cache = self._scripts.setdefault(name, {})
        ident = (function, tuple((a.dtype.str, a.ndim) for a in arrays), tuple(key_list),
                 tuple(arg_list))
        if ident in cache:
            return cache[ident]
        record = self.hgetall(keys.model_key(name, "redisai_script"))
        if not record:
            raise redis.ResponseError(f"EMODEL script key {key} is empty")
        points = record[b"entry_points"].decode().split(",")
        if points != [""] and function not in points:
            raise redis.ResponseError(f"EARGS function {function} is not an entry point of "
                                      f"{key} ({', '.join(points)})")
        specs = [{"name": f"t{i}", "dtype": _wire(a), "shape": [None] * a.ndim}
                 for i, a in enumerate(arrays)]
        # Versions are content-addressed: each variant gets a line of its own.
        variant = f"\n# inferis variant: {json.dumps([function, specs, key_list, arg_list])}\n"
        stored = self._inferis.modelstore(
            name, "torch", record[b"source"] + variant.encode(), format="torchscript-source",
            device=record[b"device"].decode().upper(), inputs=specs,
            extra={"entry": function, "keys": key_list, "args": arg_list},
            tags={"tag": record[b"tag"].decode()})
        cache[ident] = stored.version
        return stored.version

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


class Dag:
    """redisai-py's Dag: chain ``tensorset``, ``tensorget``, ``modelexecute`` and
    ``scriptexecute``, then :meth:`execute`: one result per op ('OK' or the tensor)."""

    def __init__(self, client: Client, load: Any, persist: Any, timeout: int | None) -> None:
        self._client = client
        self._load, self._persist = _names(load), _names(persist)
        self._timeout = timeout
        self._ops: list[tuple[str, tuple[Any, ...]]] = []

    def tensorset(self, key: str, tensor: Any, shape: Sequence[int] | None = None,
                  dtype: str | None = None) -> Dag:
        self._ops.append(("set", (key, _as_array(tensor, shape, dtype))))
        return self

    def tensorget(self, key: str, as_numpy: bool = True, meta_only: bool = False) -> Dag:
        self._ops.append(("get", (key, as_numpy, meta_only)))
        return self

    def modelexecute(self, key: str, inputs: Sequence[str] | str,
                     outputs: Sequence[str] | str) -> Dag:
        self._ops.append(("model", (key, _names(inputs), _names(outputs))))
        return self

    def modelrun(self, key: str, inputs: Sequence[str] | str, outputs: Sequence[str] | str
                 ) -> Dag:
        return self.modelexecute(key, inputs, outputs)

    def scriptexecute(self, key: str, function: str, keys: Sequence[str] | None = None,
                      inputs: Sequence[str] | None = None, args: Sequence[str] | None = None,
                      outputs: Sequence[str] | None = None) -> Dag:
        self._ops.append(("script", (key, function, list(keys or ()), _names(inputs),
                                     [str(a) for a in args or ()], _names(outputs))))
        return self

    def execute(self) -> list[Any]:
        inferis, held = self._client._inferis, {}
        try:
            for key in self._load:
                held[key] = inferis.tensorget(key)
            results: list[Any] = []
            for kind, op in self._ops:
                if kind == "set":
                    held[op[0]] = op[1]
                    results.append("OK")
                elif kind == "get":
                    key, as_numpy, meta_only = op
                    results.append(_present(self._held(held, key), as_numpy, False, meta_only))
                elif kind == "model":
                    key, ins, outs = op
                    run = inferis.run(_model_name(key), [self._held(held, k) for k in ins],
                                      timeout_ms=self._timeout).raise_for_error()
                    held.update(zip(outs, run.outputs.values(), strict=False))
                    results.append("OK")
                else:
                    key, function, key_list, ins, arg_list, outs = op
                    arrays = [self._held(held, k) for k in ins]
                    name = _model_name(key)
                    version = self._client._script_version(name, key, function, arrays,
                                                           key_list, arg_list)
                    run = inferis.run(name, arrays, version=version,
                                      timeout_ms=self._timeout).raise_for_error()
                    held.update(zip(outs, run.outputs.values(), strict=False))
                    results.append("OK")
            for key in self._persist:
                inferis.tensorset(key, self._held(held, key))
        except InferisError as exc:
            raise _refused(exc) from None
        return results

    run = execute  # redisai-py's deprecated name

    def _held(self, held: dict[str, np.ndarray], key: str) -> np.ndarray:
        if key not in held:
            raise redis.ResponseError(f"EINPUT tensor key {key} is not loaded or set in the DAG")
        return held[key]
