"""The executor: check each request, then run the batch.

``prepare`` resolves each request's model version, loads it if needed, decodes
its inputs (inline, read at enqueue, or read now in one round trip) and checks
them against the model's signature. ``run`` batches what passed and calls
the backends. Every failure of one request, whatever its kind, becomes that
request's error; nothing one request contains can stop the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import redis

from inferis.client.protocol.aliases import is_alias_ref
from inferis.client.protocol.entries import REF_LARGE, REF_MISSING, REF_NOT_STRING
from inferis.client.protocol.errors import (
    BackendError,
    DeadlineExceeded,
    InferisError,
    InputError,
)
from inferis.client.protocol.tensor import decode_tensor

from .. import metrics
from ..backends.base import RunTimeout
from ..models.cache import ModelCache
from .batching import plan, run_batch, shared_rows
from .prediction_cache import PredictionCache
from .request import Request

log = logging.getLogger(__name__)


class Executor:
    def __init__(self, conn: redis.Redis, cache: ModelCache) -> None:
        self._redis = conn
        self.cache = cache
        self.predictions = PredictionCache(conn)

    def prepare(self, requests: Sequence[Request], now_ms: int) -> None:
        """Check every request not already failed; those that pass are ready to run."""
        fetched = self._read_large_inputs(requests)
        for request in requests:
            if request.error is not None:
                continue
            try:
                self._prepare_one(request, fetched, now_ms)
            except InferisError as exc:
                request.fail(exc)
            except Exception as exc:  # a bug or a library's surprise: this request's error only
                log.exception("preparing request %s failed", request.rid)
                request.fail(InputError(f"request {request.rid} could not be prepared: "
                                        f"{type(exc).__name__}: {exc}"))
        self.predictions.lookup(requests)  # hits are answered, not run

    def run(self, requests: Sequence[Request]) -> None:
        for batch in plan([r for r in requests if r.ready]):
            run_batch(batch, self._call)

    # ------------------------------------------------------------------ steps

    def _read_large_inputs(self, requests: Sequence[Request]) -> dict[str, bytes | None]:
        """One pipelined round trip for stored inputs too large to travel in the entry."""
        wanted = sorted({
            slot.key for r in requests if r.error is None for slot in r.spec.inputs
            if slot.data is None and r.entry.refs.get(slot.key) == REF_LARGE
        })
        if not wanted:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for key in wanted:
            pipe.get(key)
        return dict(zip(wanted, pipe.execute(raise_on_error=False), strict=True))

    def _prepare_one(self, request: Request, fetched: dict[str, bytes | None], now_ms: int) -> None:
        spec = request.spec
        if now_ms > spec.deadline_ms:
            raise DeadlineExceeded(
                f"request {spec.rid} reached the worker {now_ms - spec.deadline_ms} ms "
                "after its deadline"
            )
        version = spec.version
        if is_alias_ref(version):
            route = self.cache.route(spec.model, version)
            if route is not None and route.arms:  # else MODELGET says what is wrong
                request.route = route
                version = str(route.pick(spec.unit))
        loaded = self.cache.load(self.cache.resolve(spec.model, version))
        request.info = loaded.info
        arrays: list[tuple[str, np.ndarray]] = []
        for position, slot in enumerate(spec.inputs, start=1):
            arrays.append((slot.name, self._input(request, position, slot.key, slot.data, fetched)))
        signature = loaded.signature
        request.feed = signature.bind(arrays)
        request.output_names = signature.outputs_for(
            [o.name for o in spec.outputs], len(spec.outputs)
        )
        request.rows = shared_rows(request.feed)
        request.model = loaded.model

    @staticmethod
    def _input(
        request: Request, position: int, key: str, data: bytes | None,
        fetched: dict[str, bytes | None],
    ) -> np.ndarray:
        what = f"input {position} ({key})" if key else f"input {position}"
        if data is None:
            # Only keys the Function read as the caller are in refs (it checked their tag).
            data = request.entry.refs.get(key)
            if data == REF_LARGE:
                data = fetched.get(key)
            if data is None or data == REF_MISSING:
                raise InputError(f"{what} does not exist or expired")
            if data == REF_NOT_STRING:
                raise InputError(f"{what} is not a string key holding a tensor")
            if isinstance(data, Exception):
                raise InputError(f"{what} cannot be read: {data}")
        try:
            return decode_tensor(data)
        except InferisError as exc:
            raise type(exc)(f"{what}: {exc.message}") from None

    @staticmethod
    def _call(request: Request, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        assert request.model is not None and request.info is not None
        started = time.perf_counter_ns()
        try:
            results = request.model.run(feed)
        except RunTimeout:
            metrics.RUN_TIMEOUTS.labels(request.info.name).inc()
            raise
        except InferisError:
            raise
        except Exception as exc:
            raise BackendError(
                f"{request.info.label} failed: {type(exc).__name__}: {exc}"
            ) from None
        run_us = (time.perf_counter_ns() - started) // 1000
        info = request.info
        metrics.series(info.name, str(info.version)).inference.observe(run_us / 1e6)
        return results, run_us
