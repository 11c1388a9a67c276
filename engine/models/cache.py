"""The worker's model cache: name/version -> metadata -> loaded model by content.

Numbered versions are immutable, so their metadata is cached until the
version is deleted. ``latest`` and aliases move, so they are re-resolved when
a MODELSTORE/MODELDEL notice arrives on the ``inferis:models`` channel, and
after a short TTL in case a notice was missed. Loaded models are keyed by
what determines them (the digest and the load options), and every load
verifies the blob's SHA-256 (loading.py).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import redis

from inferis.client.protocol import commands, keys
from inferis.client.protocol.aliases import AliasRoute
from inferis.client.protocol.errors import InferisError, ModelNotFoundError, translate_error
from inferis.client.protocol.models import ModelInfo
from inferis.client.protocol.replies import text_map

from .. import metrics
from ..backends.base import BackendOptions
from ..isolation.runner import IsolatedRunner
from .loading import (
    PIPELINE_BACKEND,
    Loaded,
    fetch_model_file,
    load_backend_model,
    signature_of,
)
from .pipeline import PipelineModel, parse_pipeline

MOVING_REF_TTL_S = 5.0
FAILED_LOAD_TTL_S = 30.0

# digest, backend, format, device, and the load options a backend reads from the
# metadata (declared specs, extra): the same bytes can load as different models.
LoadKey = tuple[str, str, str, str, str]


def load_key(info: ModelInfo) -> LoadKey:
    options = json.dumps(
        [[s.to_wire() for s in info.inputs], [s.to_wire() for s in info.outputs], info.extra],
        sort_keys=True, default=str,
    )
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
        runner_for: Callable[[ModelInfo], IsolatedRunner | None] = lambda info: None,
    ) -> None:
        self._redis = conn
        self._options = options
        self._max_models = max_models
        # The backend process a model loads and runs in (cut off when hung, confined
        # by the sandbox), or None for this process.
        self._runner_for = runner_for
        self._resolved: dict[tuple[str, str], _Resolved] = {}
        self._routes: dict[tuple[str, str], tuple[AliasRoute | None, float]] = {}
        self._loaded: OrderedDict[LoadKey, Loaded] = OrderedDict()
        self._failed: dict[LoadKey, tuple[InferisError, float]] = {}
        self._load_keys: dict[tuple[str, int, str], LoadKey] = {}
        self.loads = 0
        # (name, version, digest) of each load, until the lifecycle reports them to the
        # model's audit.
        self.unreported_loads: list[tuple[str, int, str]] = []
        # Called after each load (the worker settles its heap then).
        self.on_load: Callable[[], None] = lambda: None

    def rebind(self, conn: redis.Redis) -> None:
        """Use a new connection (after a reconnect) and drop moving resolutions."""
        self._redis = conn
        self.invalidate()

    def invalidate(self, name: str | None = None) -> None:
        """Forget resolutions of ``name`` (or all): a version was stored or deleted."""
        if name is None:
            self._resolved.clear()
            self._routes.clear()
            return
        for key in [k for k in self._resolved if k[0] == name]:
            del self._resolved[key]
        for key in [k for k in self._routes if k[0] == name]:
            del self._routes[key]

    def route(self, name: str, alias: str) -> AliasRoute | None:
        """The alias record (None: no such alias), cached like moving references."""
        now = time.monotonic()
        cached = self._routes.get((name, alias))
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            flat = self._redis.execute_command(
                "FCALL_RO", *commands.alias_get(name, alias).as_args()[1:])
            route: AliasRoute | None = AliasRoute.parse(alias, text_map(flat))
        except redis.ResponseError as exc:
            if "EMODEL" not in str(exc):
                raise translate_error(exc) from None
            route = None
        self._routes[(name, alias)] = (route, now + MOVING_REF_TTL_S)
        return route

    def held_names(self) -> set[str]:
        """Models this worker has loaded (it heartbeats for them, and warms their
        aliases' versions)."""
        return {loaded.info.name for loaded in self._loaded.values()}

    def resolve(self, name: str, version: str) -> ModelInfo:
        if not keys.is_model_name(name):
            raise ModelNotFoundError(f"{name!r} is not a valid model name")
        now = time.monotonic()
        cached = self._resolved.get((name, version))
        if cached is not None and cached.expires > now:
            return cached.info
        command = commands.modelget(name, version or None)
        try:
            reply = self._redis.execute_command("FCALL_RO", *command.as_args()[1:])
        except redis.ResponseError as exc:
            raise translate_error(exc) from None
        info, _ = ModelInfo.parse(reply)
        fixed = version.isdigit()
        self._resolved[(name, version)] = _Resolved(
            info, float("inf") if fixed else now + MOVING_REF_TTL_S
        )
        return info

    def load(self, info: ModelInfo) -> Loaded:
        # A numbered version's metadata never changes: its load key is computed once.
        ident = (info.name, info.version, info.digest)
        key = self._load_keys.get(ident)
        if key is None:
            key = self._load_keys[ident] = load_key(info)
        loaded = self._loaded.get(key)
        if loaded is not None:
            self._loaded.move_to_end(key)
            return loaded if loaded.info is info else Loaded(info, loaded.model, loaded.signature)
        failed = self._failed.get(key)
        if failed is not None and failed[1] > time.monotonic():
            raise failed[0]
        try:
            loaded = signature_of(info, self._load_uncached(info, key))
        except InferisError as exc:
            self._failed[key] = (exc, time.monotonic() + FAILED_LOAD_TTL_S)
            metrics.MODEL_LOAD_FAILURES.labels(info.name, exc.code).inc()
            raise
        self._loaded[key] = loaded
        self.loads += 1
        self.unreported_loads.append((info.name, info.version, info.digest))
        self.on_load()
        metrics.MODEL_LOADS.labels(info.name, str(info.version), info.backend).inc()
        while len(self._loaded) > self._max_models:
            # Dropped, not closed: a request being prepared may still hold it; the
            # model is released when the last holder lets go (backends that hold
            # files clean up on collection).
            self._loaded.popitem(last=False)
        return loaded

    def resolve_and_load(self, name: str, version: str) -> Loaded:
        return self.load(self.resolve(name, version))

    def _load_uncached(self, info: ModelInfo, key: LoadKey):  # type: ignore[no-untyped-def]
        if info.backend == PIPELINE_BACKEND:
            spec = parse_pipeline(fetch_model_file(self._redis, info, self._options))
            return PipelineModel(info.name, spec, self.resolve_and_load)
        return load_backend_model(self._redis, info, self._options, self._runner_for(info), key)
