"""Turn parsed requests into outcomes: fetch inputs, check, run, encode.

Every failure of one request becomes that request's error outcome; nothing a
request contains can stop the others in its batch from being served.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import redis

from inferis.client.errors import BackendError, DeadlineExceeded, InferisError, InputError
from inferis.client.tensor import decode_tensor, encode_tensor

from .models import ModelCache
from .requests import RunRequest
from .signature import bind_inputs, merge_specs, select_outputs

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    request: RunRequest
    error: InferisError | None = None
    version: int = 0
    # (output name, key to write, encoded tensor)
    outputs: list[tuple[str, str, bytes]] = field(default_factory=list)
    run_us: int = 0


class Executor:
    def __init__(self, conn: redis.Redis, cache: ModelCache) -> None:
        self._redis = conn
        self.cache = cache

    def execute(self, requests: list[RunRequest], now_ms: int) -> list[Outcome]:
        fetched = self._fetch_referenced(requests)
        outcomes = []
        for request in requests:
            outcome = Outcome(request)
            try:
                if now_ms > request.deadline_ms:
                    raise DeadlineExceeded(
                        f"request {request.rid} reached the worker "
                        f"{now_ms - request.deadline_ms} ms after its deadline"
                    )
                self._run_one(request, fetched, outcome)
            except InferisError as exc:
                outcome.error = exc
                outcome.outputs = []
            outcomes.append(outcome)
        return outcomes

    def _fetch_referenced(self, requests: list[RunRequest]) -> dict[str, bytes | None]:
        """One pipelined round trip for every input not carried in its entry."""
        wanted = sorted({i.key for r in requests for i in r.inputs if i.inline is None})
        if not wanted:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for key in wanted:
            pipe.get(key)
        return dict(zip(wanted, pipe.execute(raise_on_error=False), strict=True))

    def _run_one(
        self, request: RunRequest, fetched: dict[str, bytes | None], outcome: Outcome
    ) -> None:
        info = self.cache.resolve(request.model, request.version)
        outcome.version = info.version
        model = self.cache.load(info)
        arrays: list[tuple[str, np.ndarray]] = []
        for position, ref in enumerate(request.inputs, start=1):
            raw = ref.inline if ref.inline is not None else fetched.get(ref.key)
            if raw is None or isinstance(raw, Exception):
                raise InputError(f"input {position} ({ref.key}) does not exist or expired")
            try:
                arrays.append((ref.name, decode_tensor(raw)))
            except InferisError as exc:
                raise type(exc)(f"input {position} ({ref.key}): {exc.message}") from None
        feed = bind_inputs(request.model, merge_specs(model.inputs, info.inputs), arrays)
        names = select_outputs(
            request.model, model.outputs, [o.name for o in request.outputs], len(request.outputs)
        )
        started = time.perf_counter_ns()
        try:
            results = model.run(feed)
        except InferisError:
            raise
        except Exception as exc:
            raise BackendError(
                f"model {info.name} v{info.version} failed: {type(exc).__name__}: {exc}"
            ) from None
        outcome.run_us = (time.perf_counter_ns() - started) // 1000
        targets = (
            [o.key for o in request.outputs]
            if request.outputs
            else [request.output_prefix + n for n in names]
        )
        for name, key in zip(names, targets, strict=True):
            try:
                outcome.outputs.append((name, key, encode_tensor(results[name])))
            except InferisError as exc:
                raise BackendError(f"output {name} cannot be stored: {exc.message}") from None
