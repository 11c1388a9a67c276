"""What a worker does for aliases beside serving: warm versions before an alias
moves to them, mirror traffic to shadow versions, and log answers for feedback.

None of it may delay an answer. Logs and shadow runs are collected while a
batch is served and done after its completion has been written (with the next
read, see ``Worker.read_batch``); shadow runs are dropped when requests are
waiting. A failure here is logged and dropped: it is telemetry, serving goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from inferis.client.protocol import commands
from inferis.client.protocol.aliases import AliasRoute
from inferis.client.protocol.models import ANY_DTYPE
from inferis.client.protocol.tensor import numpy_dtype

from .. import metrics
from ..models.cache import ModelCache
from .request import Request

log = logging.getLogger(__name__)

# Shadow runs waiting beyond this are dropped: the shadow never holds the worker.
MAX_SHADOW_BACKLOG = 256
FLOAT_RTOL, FLOAT_ATOL = 1e-3, 1e-5


@dataclass
class _ShadowJob:
    model: str
    primary: int
    shadow: int
    feed: dict[str, np.ndarray]
    results: dict[str, np.ndarray]


@dataclass
class _Agreement:
    compared: int = 0
    agreed: int = 0
    max_diff: float = 0.0


class Lifecycle:
    def __init__(self, conn: Any, cache: ModelCache, consumer: str) -> None:
        self._redis = conn
        self.cache = cache
        self.consumer = consumer
        self._logs: dict[tuple[str, int], list[Any]] = {}  # (model, ttl) -> records
        self._shadows: list[_ShadowJob] = []
        self._dirty: set[str] = set()  # models whose aliases may have changed
        self._warm: set[tuple[str, int, str]] = set()  # (model, version, digest) warmed here

    def rebind(self, conn: Any) -> None:
        self._redis = conn

    # ---------------------------------------------------------------- per batch

    def after_batch(self, requests: Sequence[Request]) -> None:
        """Note the log records and shadow runs of a served batch's alias requests."""
        for request in requests:
            route, info = request.route, request.info
            if route is None or info is None:
                continue
            metrics.ALIAS_REQUESTS.labels(info.name, route.alias, str(info.version)).inc()
            if request.error is not None or not request.results:
                continue
            record = _log_record(request)
            if record is not None:
                self._logs.setdefault((info.name, route.log_ttl_ms), []).extend(record)
            if route.mirrors(request.spec.unit) and route.shadow != info.version:
                job = _ShadowJob(info.name, info.version, route.shadow, request.feed,
                                 request.results)
                if len(self._shadows) < MAX_SHADOW_BACKLOG:
                    self._shadows.append(job)
                else:
                    _count_shadow(job, "dropped")

    def flush(self, backlogged: bool) -> None:
        """Run the shadow jobs (unless requests wait: then they are dropped) and send
        the logs and agreements; called once completions are on their way."""
        if not self._logs and not self._shadows:
            return
        jobs, self._shadows = self._shadows, []
        agreements: dict[tuple[str, int, int], _Agreement] = {}
        for job in jobs:
            if backlogged:
                _count_shadow(job, "dropped")
                continue
            self._run_shadow(job, agreements)
        logs, self._logs = self._logs, {}
        try:
            pipe = self._redis.pipeline(transaction=False)
            for (model, ttl), records in logs.items():
                pipe.execute_command(*commands.log_predictions(model, ttl, records).as_args())
                metrics.PREDICTIONS_LOGGED.labels(model).inc(len(records) // 5)
            for (model, primary, shadow), a in agreements.items():
                pipe.execute_command(*commands.shadow_agreement(
                    model, primary, shadow, a.compared, a.agreed, a.max_diff).as_args())
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not write prediction logs / shadow agreement: %s", exc)

    def _run_shadow(self, job: _ShadowJob, agreements: dict[tuple[str, int, int], _Agreement]
                    ) -> None:
        try:
            loaded = self.cache.load(self.cache.resolve(job.model, str(job.shadow)))
            got = loaded.model.run(job.feed)
        except Exception as exc:  # a shadow's failure is data about the shadow
            log.debug("shadow %s v%d failed: %s", job.model, job.shadow, exc)
            _count_shadow(job, "error")
            return
        agreed, diff = compare(job.results, got)
        a = agreements.setdefault((job.model, job.primary, job.shadow), _Agreement())
        a.compared += 1
        a.agreed += int(agreed)
        a.max_diff = max(a.max_diff, diff)
        _count_shadow(job, "agreed" if agreed else "disagreed")

    # ---------------------------------------------------------------- warming

    def changed(self, model: str) -> None:
        """A notice named ``model``: its aliases may want versions warmed."""
        self._dirty.add(model)

    def look_again(self) -> None:
        """Every model held here is looked at (a notice may have been missed)."""
        self._dirty.update(self.cache.held_names())

    def warm_what_aliases_need(self) -> None:
        """Load and warm every version the aliases of changed models name (active,
        pending, shadow), then tell Redis, which moves a pending alias once every
        live worker of the model has done so."""
        dirty, self._dirty = self._dirty, set()
        held = self.cache.held_names()
        for model in dirty & held:
            try:
                self._warm_model(model)
            except redis.RedisError as exc:
                log.warning("could not warm the aliases of %s: %s", model, exc)
                self._dirty.add(model)

    def _warm_model(self, model: str) -> None:
        raw = self._redis.execute_command("FCALL_RO", *commands.alias_get(model).as_args()[1:])
        it = iter(raw or ())
        routes = [AliasRoute.parse(_text(a), _fields(f)) for a, f in zip(it, it, strict=True)]
        wanted = sorted({v for route in routes for v in route.versions()})
        warm = [v for v in wanted if self._warm_version(model, v)]
        if any(route.pending for route in routes) and warm:
            self._redis.execute_command(*commands.warmed(model, self.consumer, warm).as_args())

    def _warm_version(self, model: str, version: int) -> bool:
        loads = self.cache.loads
        try:
            info = self.cache.resolve(model, str(version))
            loaded = self.cache.load(info)
        except Exception as exc:
            log.warning("cannot warm %s v%d: %s", model, version, exc)
            return False
        ident = (model, version, info.digest)
        if ident in self._warm:
            return True
        if self.cache.loads > loads:  # loaded here, not by a request
            metrics.WARMUP_LOADS.labels(model, str(version)).inc()
        feed = warmup_feed(loaded.signature.inputs)
        if feed is not None:
            try:
                loaded.model.run(feed)
            except Exception as exc:  # loaded is what matters; the warm-up is a bonus
                log.info("warm-up run of %s v%d failed (%s); it is loaded", model, version, exc)
        self._warm.add(ident)
        metrics.WARMUPS.labels(model, str(version)).inc()
        log.info("warmed %s v%d for its aliases", model, version)
        return True


def warmup_feed(specs: Iterable[Any]) -> dict[str, np.ndarray] | None:
    """Zeros shaped by the signature (unknown dimensions as 1); None when the
    signature does not say enough to build inputs."""
    feed = {}
    for spec in specs:
        if spec.dtype == ANY_DTYPE or spec.shape is None:
            return None
        try:
            dtype = numpy_dtype(spec.dtype)
        except Exception:
            return None
        feed[spec.name] = np.zeros([1 if d is None else d for d in spec.shape], dtype=dtype)
    return feed or None


def compare(primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray]) -> tuple[bool, float]:
    """Agreement of two answers: integer outputs (labels) equal, float outputs
    within a relative 1e-3 when there is no integer output; and the largest
    absolute difference over every common output."""
    common = [n for n in primary if n in shadow]
    agreed, diff, labels = True, 0.0, False
    for name in common:
        a, b = np.asarray(primary[name]), np.asarray(shadow[name])
        if a.shape != b.shape:
            return False, float("inf")
        if a.dtype.kind in "iub":
            labels = True
            agreed &= bool(np.array_equal(a, b))
        if a.dtype.kind in "iubf" and a.size:
            diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    if not labels:
        agreed = all(np.allclose(primary[n], shadow[n], rtol=FLOAT_RTOL, atol=FLOAT_ATOL)
                     for n in common if np.asarray(primary[n]).dtype.kind == "f")
    return agreed and bool(common), diff


def _log_record(request: Request) -> list[Any] | None:
    """(rid, version, kind, pred, proba) from the first output: an integer one is
    a class (with the probabilities of a float output beside it, if any), a float
    one a regression value."""
    assert request.info is not None
    names = [n for n in request.output_names if n in request.results] or list(request.results)
    if not names:
        return None
    first = np.asarray(request.results[names[0]])
    if first.size == 0 or first.dtype.kind not in "iubf":
        return None
    proba = ""
    if first.dtype.kind in "iub":
        kind, pred = "classification", str(int(first.reshape(-1)[0]))
        for name in names[1:]:
            other = np.asarray(request.results[name])
            if other.dtype.kind == "f" and other.ndim == 2 and other.shape[1] <= 1000:
                proba = ",".join(f"{x:.6g}" for x in other[0])
                break
    else:
        kind, pred = "regression", f"{float(first.reshape(-1)[0]):.9g}"
    return [request.rid, request.info.version, kind, pred, proba]


def _count_shadow(job: _ShadowJob, outcome: str) -> None:
    metrics.SHADOW_RUNS.labels(job.model, str(job.primary), str(job.shadow), outcome).inc()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(flat: Any) -> dict[str, str]:
    it = iter(flat or ())
    return {_text(k): _text(v) for k, v in zip(it, it, strict=True)}
