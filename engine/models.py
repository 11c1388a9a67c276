"""The worker's model cache: name/version -> metadata -> loaded model by digest.

Numbered versions are immutable, so their metadata is cached until the
version is deleted. ``latest`` and aliases move, so they are re-resolved when
a MODELSTORE/MODELDEL notice arrives on the ``inferis:models`` channel, and
after a short TTL in case a notice was missed. Loaded models are keyed by
content digest, and every load verifies the blob's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import redis

from inferis.client import core, keys
from inferis.client.core import ModelInfo
from inferis.client.errors import (
    BackendError,
    DigestError,
    InferisError,
    ModelNotFoundError,
    UnsafeModelError,
)

from . import metrics
from .backends.base import BackendOptions, LoadedModel
from .backends.registry import canonical_name, get_backend, load_model
from .isolation import IsolatedModel, IsolatedRunner
from .pipeline import PIPELINE_BACKEND, PipelineModel, parse_pipeline

log = logging.getLogger(__name__)

# Formats whose loading can execute arbitrary code.
UNSAFE_FORMATS = frozenset({"pickle", "joblib", "cloudpickle"})
MOVING_REF_TTL_S = 5.0
FAILED_LOAD_TTL_S = 30.0


# digest, backend, format, device, and the load options a backend reads from the
# metadata (declared specs, extra): the same bytes can load as different models.
_LoadKey = tuple[str, str, str, str, str]


def _load_key(info: ModelInfo) -> _LoadKey:
    options = json.dumps([info.inputs, info.outputs, info.extra], sort_keys=True, default=str)
    return (info.digest, info.backend, info.format, info.device, options)


@dataclass
class _Resolved:
    info: ModelInfo
    expires: float  # monotonic; inf for a numbered version


class ModelCache:
    def __init__(
        self,
        conn: redis.Redis,
        options: BackendOptions,
        max_models: int = 32,
        runner: IsolatedRunner | None = None,
    ) -> None:
        # With a runner, models load and run in its child process (cut off when hung).
        self._runner = runner
        self._redis = conn
        self._options = options
        self._max_models = max_models
        self._resolved: dict[tuple[str, str], _Resolved] = {}
        self._loaded: OrderedDict[_LoadKey, LoadedModel] = OrderedDict()
        self._failed: dict[_LoadKey, tuple[InferisError, float]] = {}
        self._load_keys: dict[tuple[str, int, str], _LoadKey] = {}
        # The I/O loop and the inference thread (pipelines) both use the cache.
        self._lock = threading.RLock()
        self.loads = 0

    def rebind(self, conn: redis.Redis) -> None:
        """Use a new connection (after a reconnect) and drop moving resolutions."""
        self._redis = conn
        self.invalidate()

    def invalidate(self, name: str | None = None) -> None:
        with self._lock:
            return self._invalidate_unlocked(name)

    def _invalidate_unlocked(self, name: str | None = None) -> None:
        """Forget resolutions of ``name`` (or all): a version was stored or deleted."""
        if name is None:
            self._resolved.clear()
            return
        for key in [k for k in self._resolved if k[0] == name]:
            del self._resolved[key]

    def resolve(self, name: str, version: str) -> ModelInfo:
        with self._lock:
            return self._resolve_unlocked(name, version)

    def _resolve_unlocked(self, name: str, version: str) -> ModelInfo:
        if not keys.is_model_name(name):
            raise ModelNotFoundError(f"{name!r} is not a valid model name")
        now = time.monotonic()
        cached = self._resolved.get((name, version))
        if cached is not None and cached.expires > now:
            return cached.info
        args: list[str] = ["META"]
        if version:
            args += ["VERSION", version]
        try:
            reply = self._redis.fcall_ro("MODELGET", 1, name, *args)
        except redis.ResponseError as exc:
            raise core.translate_error(exc) from None
        info, _ = core.parse_model_info(reply)
        fixed = version.isdigit()
        self._resolved[(name, version)] = _Resolved(
            info, float("inf") if fixed else now + MOVING_REF_TTL_S
        )
        return info

    def load(self, info: ModelInfo) -> LoadedModel:
        with self._lock:
            return self._load_unlocked(info)

    def _load_unlocked(self, info: ModelInfo) -> LoadedModel:
        # A numbered version's metadata never changes: its load key is computed once.
        ident = (info.name, info.version, info.digest)
        key = self._load_keys.get(ident)
        if key is None:
            key = self._load_keys[ident] = _load_key(info)
        model = self._loaded.get(key)
        if model is not None:
            self._loaded.move_to_end(key)
            return model
        failed = self._failed.get(key)
        if failed is not None and failed[1] > time.monotonic():
            raise failed[0]
        try:
            model = self._load_uncached(info, key)
        except InferisError as exc:
            self._failed[key] = (exc, time.monotonic() + FAILED_LOAD_TTL_S)
            metrics.MODEL_LOAD_FAILURES.labels(info.name, exc.code).inc()
            raise
        self._loaded[key] = model
        self.loads += 1
        metrics.MODEL_LOADS.labels(info.name, str(info.version), info.backend).inc()
        while len(self._loaded) > self._max_models:
            # Dropped, not closed: requests already prepared may still run it; the
            # model is released when the last of them lets go (backends that hold
            # files clean up on collection).
            self._loaded.popitem(last=False)
        return model

    def _resolve_and_load(self, name: str, version: str) -> tuple[ModelInfo, LoadedModel]:
        info = self.resolve(name, version)
        return info, self.load(info)

    def _load_uncached(self, info: ModelInfo, key: _LoadKey) -> LoadedModel:
        if info.format in UNSAFE_FORMATS and not self._options.trust_unsafe_formats:
            raise UnsafeModelError(
                f"model {info.name} v{info.version} is in format {info.format!r}, which can run "
                "arbitrary code when loaded; the worker refuses it unless started with "
                "--trust-unsafe-formats"
            )
        if info.backend == PIPELINE_BACKEND:
            spec = parse_pipeline(self._fetch_blob(info))
            return PipelineModel(info.name, spec, self._resolve_and_load)
        if self._runner is not None:
            canonical_name(info.backend)  # ENOBACKEND for an unknown name, before fetching
            blob = self._fetch_blob(info)
            started = time.perf_counter()
            model: LoadedModel = IsolatedModel(self._runner, key, blob, info)
        else:
            get_backend(info.backend)  # ENOBACKEND before fetching a blob it cannot load
            blob = self._fetch_blob(info)
            started = time.perf_counter()
            try:
                model = load_model(blob, info, self._options)
            except InferisError:
                raise
            except Exception as exc:
                raise BackendError(
                    f"cannot load model {info.name} v{info.version} with backend "
                    f"{info.backend}: {type(exc).__name__}: {exc}"
                ) from None
        log.info(
            "loaded %s v%s (%s, %d bytes) in %.1f ms",
            info.name, info.version, info.backend, info.size,
            (time.perf_counter() - started) * 1000,
        )
        return model

    def _fetch_blob(self, info: ModelInfo) -> bytes:
        pipe = self._redis.pipeline(transaction=False)
        for index in range(info.chunks):
            pipe.get(keys.model_key(info.name, f"blob:{info.digest}:{index}"))
        parts = pipe.execute()
        if any(p is None for p in parts):
            raise DigestError(f"model {info.name} v{info.version} is missing blob chunks")
        blob = b"".join(parts)
        if hashlib.sha256(blob).hexdigest() != info.digest:
            raise DigestError(
                f"model {info.name} v{info.version}: blob SHA-256 does not match its digest "
                f"{info.digest}; refusing to load it"
            )
        return blob
