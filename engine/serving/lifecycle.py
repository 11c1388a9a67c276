"""What a worker does for aliases beside serving: warm versions before an alias
moves to them, mirror traffic to shadow versions, and log answers for feedback.

None of it may delay an answer. Logs and shadow runs are collected while a
batch is served and done after its completion has been written (with the next
read, see ``Worker.read_batch``); shadow runs are dropped when requests are
waiting. The versions this worker loaded are reported to their models' audit
then too. A failure here is logged and dropped: it is telemetry, serving goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from inferis.client import audit
from inferis.client import drift as D
from inferis.client.protocol import commands
from inferis.client.protocol.aliases import parse_routes
from inferis.client.protocol.models import ANY_DTYPE
from inferis.client.protocol.replies import text_map
from inferis.client.protocol.tensor import numpy_dtype

from .. import metrics
from ..models.cache import ModelCache
from .request import Request

log = logging.getLogger(__name__)

# Shadow runs waiting beyond this are dropped: the shadow never holds the worker.
MAX_SHADOW_BACKLOG = 256
# Drift histograms: values kept per column between flushes (a sample beyond it is
# dropped, which bounds memory and CPU), columns per tensor, how long windows live.
DRIFT_MAX_VALUES = 20_000
DRIFT_MAX_COLUMNS = 64
DRIFT_FLUSH_S = 2.0
DRIFT_GAUGE_S = 30.0
DRIFT_KEEP_MS = 7 * 24 * 3600 * 1000
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
    def __init__(self, conn: Any, cache: ModelCache, consumer: str,
                 drift_window_s: int = 60) -> None:
        self._redis = conn
        self.cache = cache
        self.consumer = consumer
        self.region = 0  # Active-Active: the worker's region index (alias decisions)
        self.drift_window_s = drift_window_s
        self._drift: dict[tuple[str, int], dict[str, list[np.ndarray]]] = {}
        self._drift_sizes: dict[tuple[str, int, str], int] = {}
        self._edges: dict[tuple[str, int], dict[str, tuple[float, float]]] = {}
        self._next_drift_flush = time.monotonic() + DRIFT_FLUSH_S
        self._next_gauges = time.monotonic() + DRIFT_GAUGE_S
        self._logs: dict[tuple[str, int], list[Any]] = {}  # (model, ttl) -> records
        self._shadows: list[_ShadowJob] = []
        self._dirty: set[str] = set()  # models whose aliases may have changed
        self._warm: set[tuple[str, int, str]] = set()  # (model, version, digest) warmed here
        self._by: str | None = None  # <ACL user>/<consumer>: this worker in the audit

    def rebind(self, conn: Any) -> None:
        self._redis = conn
        self._by = None  # the new connection may be another user's

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
            self._note_drift(info.name, info.version, request)
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
        now = time.monotonic()
        if now >= self._next_drift_flush:
            self._next_drift_flush = now + DRIFT_FLUSH_S
            self._flush_drift()
        if now >= self._next_gauges:
            self._next_gauges = now + DRIFT_GAUGE_S
            self._update_drift_gauges()
        if self.cache.unreported_loads:
            self._report_loads()
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

    def _report_loads(self) -> None:
        """One ``load`` entry per version loaded since the last report, in the audit of
        its model, by ``<ACL user>/<consumer>``."""
        loads, self.cache.unreported_loads = self.cache.unreported_loads, []
        by_model: dict[str, list[Any]] = {}
        for name, version, digest in loads:
            by_model.setdefault(name, []).extend([version, digest])
        try:
            if self._by is None:
                try:
                    user = self._redis.execute_command(*audit.WHOAMI)
                    user = user.decode() if isinstance(user, bytes) else str(user)
                except redis.ResponseError:  # ACL WHOAMI refused: an unknown user
                    user = ""
                self._by = audit.stated_by(user, self.consumer)
            pipe = self._redis.pipeline(transaction=False)
            for name, versions in by_model.items():
                pipe.execute_command(*commands.loaded(name, self._by, versions).as_args())
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not record %d model load(s) in the audit: %s", len(loads), exc)

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

    # ---------------------------------------------------------------- drift

    def _note_drift(self, model: str, version: int, request: Request) -> None:
        columns = self._drift.setdefault((model, version), {})
        for prefix, tensors in (("in", request.feed), ("out", request.results)):
            for name, array in tensors.items():
                for column, values in _columns(f"{prefix}:{name}", np.asarray(array)):
                    size_key = (model, version, column)
                    if self._drift_sizes.get(size_key, 0) >= DRIFT_MAX_VALUES:
                        continue
                    columns.setdefault(column, []).append(values)
                    self._drift_sizes[size_key] = self._drift_sizes.get(size_key, 0) + values.size

    def _flush_drift(self) -> None:
        """Histograms of what was served since the last flush, added to this window."""
        pending, self._drift, self._drift_sizes = self._drift, {}, {}
        if not pending:
            return
        window = int(time.time()) // self.drift_window_s
        keep_from = window - DRIFT_KEEP_MS // (self.drift_window_s * 1000)
        try:
            for (model, version), columns in pending.items():
                values = {c: np.concatenate(parts).astype(np.float64)
                          for c, parts in columns.items()}
                edges = self._edges_for(model, version, values)
                counts: list[Any] = []
                for column, data in values.items():
                    if column in edges and data.size:
                        lo, hi = edges[column]
                        counts += [column, ",".join(map(str, D.histogram(data, lo, hi)))]
                if counts:
                    self._redis.execute_command(*commands.drift_counts(
                        model, version, window, DRIFT_KEEP_MS, keep_from, counts).as_args())
        except redis.RedisError as exc:
            log.warning("could not write drift histograms: %s", exc)

    def _edges_for(self, model: str, version: int, values: dict[str, np.ndarray]
                   ) -> dict[str, tuple[float, float]]:
        known = self._edges.setdefault((model, version), {})
        new = [c for c in values if c not in known and values[c].size]
        if new:
            proposals: list[Any] = []
            for column in new:
                lo, hi = D.edges_for(values[column])
                proposals += [column, f"{lo:.9g}", f"{hi:.9g}"]
            held = text_map(self._redis.execute_command(
                *commands.drift_edges(model, version, proposals).as_args()))
            for column, text in held.items():
                lo, hi = (float(x) for x in text.split(","))
                known[column] = (lo, hi)
        return known

    def _update_drift_gauges(self) -> None:
        """PSI of the latest window against the reference, per column, as metrics."""
        for model, version in list(self._edges):
            try:
                report = read_drift(self._redis, model, version)
            except redis.RedisError as exc:
                log.warning("could not read drift of %s v%d: %s", model, version, exc)
                continue
            for column in report:
                metrics.DRIFT_PSI.labels(model, str(version), column.column).set(column.psi)

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
        if not self._dirty:
            return
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
        routes = list(parse_routes(raw).values())
        wanted = sorted({v for route in routes for v in route.versions()})
        warm = [v for v in wanted if self._warm_version(model, v)]
        if any(route.pending for route in routes) and warm:
            self._redis.execute_command(
                *commands.warmed(model, self.consumer, warm, self.region).as_args()
            )

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


def _columns(prefix: str, array: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """A tensor's drift columns: each column of a [rows, k] tensor (k up to 64),
    else the whole tensor as one; only numbers."""
    if array.dtype.kind not in "iubf" or array.size == 0:
        return []
    if array.ndim == 2 and array.shape[1] <= DRIFT_MAX_COLUMNS:
        return [(f"{prefix}:{j}", array[:, j].ravel()) for j in range(array.shape[1])]
    if array.ndim <= 1:
        return [(f"{prefix}:0", array.ravel())]
    return [(f"{prefix}:*", array.ravel())]


def read_drift(conn: Any, model: str, version: int, reference: int | None = None,
               current: int | None = None) -> list[D.ColumnDrift]:
    """The reference and current windows of a version compared, column by column."""
    raw = conn.execute_command(
        "FCALL_RO", *commands.drift(model, version, reference, current).as_args()[1:])
    report = D.parse_reply(raw)
    return D.compare(report.reference, report.current)


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

