"""Turn parsed requests into outcomes: fetch inputs, check, batch, run, encode.

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

from . import metrics
from .batching import Prepared, batching_limits, plan, run_batch, shared_rows
from .isolation import RunTimeout
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
    batch_size: int = 1
    output_names: list[str] = field(default_factory=list)


class Executor:
    def __init__(self, conn: redis.Redis, cache: ModelCache) -> None:
        self._redis = conn
        self.cache = cache

    def execute(self, requests: list[RunRequest], now_ms: int) -> list[Outcome]:
        outcomes, prepared = self.prepare(requests, now_ms)
        self.run(prepared)
        return outcomes

    def prepare(
        self, requests: list[RunRequest], now_ms: int
    ) -> tuple[list[Outcome], list[Prepared]]:
        """Validate every request; those that pass are returned ready to run."""
        fetched = self._fetch_referenced(requests)
        outcomes: list[Outcome] = []
        prepared: list[Prepared] = []
        for request in requests:
            outcome = Outcome(request)
            outcomes.append(outcome)
            try:
                if now_ms > request.deadline_ms:
                    raise DeadlineExceeded(
                        f"request {request.rid} reached the worker "
                        f"{now_ms - request.deadline_ms} ms after its deadline"
                    )
                prepared.append(self._prepare_one(request, fetched, outcome))
            except InferisError as exc:
                outcome.error = exc
        return outcomes, prepared

    def batch_delay_us(self, prepared: list[Prepared]) -> int:
        """How long it is worth waiting for more requests to fill a batch (0: run now)."""
        rows: dict[str, int] = {}
        limits: dict[str, tuple[int, int]] = {}
        for p in prepared:
            max_batch, max_delay, _ = batching_limits(p.info)
            rows[p.info.digest] = rows.get(p.info.digest, 0) + (p.rows or max_batch)
            limits[p.info.digest] = (max_batch, max_delay)
        # wait only for a model whose batch is not full yet
        return max(
            (delay for d, (size, delay) in limits.items() if delay and rows[d] < size), default=0
        )

    def run(self, prepared: list[Prepared]) -> None:
        for batch in plan(prepared):
            run_batch(batch, self._call)
        for p in prepared:
            self._finish(p)

    def _fetch_referenced(self, requests: list[RunRequest]) -> dict[str, bytes | None]:
        """One pipelined round trip for every input not carried in its entry."""
        wanted = sorted({i.key for r in requests for i in r.inputs if i.inline is None})
        if not wanted:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for key in wanted:
            pipe.get(key)
        return dict(zip(wanted, pipe.execute(raise_on_error=False), strict=True))

    def _prepare_one(
        self, request: RunRequest, fetched: dict[str, bytes | None], outcome: Outcome
    ) -> Prepared:
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
        outcome.output_names = select_outputs(
            request.model, model.outputs, [o.name for o in request.outputs], len(request.outputs)
        )
        return Prepared(outcome, info, model, feed, shared_rows(feed))

    @staticmethod
    def _call(p: Prepared, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        started = time.perf_counter_ns()
        try:
            results = p.model.run(feed)
        except RunTimeout:
            metrics.RUN_TIMEOUTS.labels(p.info.name).inc()
            raise
        except InferisError:
            raise
        except Exception as exc:
            raise BackendError(
                f"model {p.info.name} v{p.info.version} failed: {type(exc).__name__}: {exc}"
            ) from None
        return results, (time.perf_counter_ns() - started) // 1000

    @staticmethod
    def _finish(p: Prepared) -> None:
        """Encode a run's outputs into its outcome (or record its error)."""
        outcome: Outcome = p.key
        request = outcome.request
        if p.error is not None:
            outcome.error = (
                p.error if isinstance(p.error, InferisError)
                else BackendError(f"{type(p.error).__name__}: {p.error}")
            )
            return
        outcome.run_us, outcome.batch_size = p.run_us, p.batch_size
        names = outcome.output_names
        targets = (
            [o.key for o in request.outputs]
            if request.outputs
            else [request.output_prefix + n for n in names]
        )
        try:
            for name, key in zip(names, targets, strict=True):
                if name not in p.results:
                    raise BackendError(f"model {p.info.name} returned no output {name!r}")
                try:
                    outcome.outputs.append((name, key, encode_tensor(p.results[name])))
                except InferisError as exc:
                    raise BackendError(f"output {name} cannot be stored: {exc.message}") from None
        except InferisError as exc:
            outcome.error = exc
            outcome.outputs = []
