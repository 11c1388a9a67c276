"""Worker metrics: Prometheus for scraping, per-model counters in Redis for the CLI.

The Prometheus metrics are module-level (the prometheus-client idiom), so a
backend can count a device fallback without plumbing. ``ModelStats``
accumulates per-model counts in memory and flushes them to
``inferis:{<model>}:stats`` hashes in one pipelined round trip every few
seconds, so reading stats never costs the hot path a round trip.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import redis
from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from inferis.client.protocol import commands, keys
from inferis.client.protocol.defaults import GROUP

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)

REQUESTS = Counter(
    "inferis_requests_total", "Requests answered, by model, version and status (ok or code)",
    ["model", "version", "status"],
)
QUEUE_WAIT = Histogram(
    "inferis_queue_wait_seconds", "Time from MODELRUN to a worker starting the request",
    ["model"], buckets=_LATENCY_BUCKETS,
)
INFERENCE = Histogram(
    "inferis_inference_seconds", "Time inside the backend for one run",
    ["model", "version"], buckets=_LATENCY_BUCKETS,
)
END_TO_END = Histogram(
    "inferis_request_seconds", "Time from MODELRUN to the answer being written",
    ["model"], buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "inferis_read_batch_size", "Requests handled per stream read",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
MODEL_LOADS = Counter(
    "inferis_model_loads_total", "Models loaded into memory", ["model", "version", "backend"]
)
MODEL_LOAD_FAILURES = Counter(
    "inferis_model_load_failures_total", "Model loads that failed", ["model", "code"]
)
DEVICE_FALLBACKS = Counter(
    "inferis_device_fallbacks_total",
    "Models that asked for a device this worker does not serve and ran on CPU",
    ["model", "backend", "wanted"],
)
RUN_TIMEOUTS = Counter(
    "inferis_run_timeouts_total", "Runs abandoned after exceeding their execution timeout",
    ["model"],
)
RECLAIMED = Counter("inferis_reclaimed_total", "Requests taken over from an idle consumer")
DEAD_LETTERED = Counter("inferis_dead_lettered_total", "Requests dead-lettered", ["reason"])
REDIS_DISCONNECTS = Counter("inferis_redis_disconnects_total", "Times Redis went away")
ALIAS_REQUESTS = Counter(
    "inferis_alias_requests_total", "Requests routed through an alias, by the version it chose",
    ["model", "alias", "version"],
)
SHADOW_RUNS = Counter(
    "inferis_shadow_runs_total",
    "Shadow runs by outcome: agreed, disagreed, error, or dropped (back-pressure)",
    ["model", "primary", "shadow", "outcome"],
)
PREDICTIONS_LOGGED = Counter(
    "inferis_predictions_logged_total", "Answers logged for feedback to join", ["model"]
)
WARMUPS = Counter(
    "inferis_warmups_total", "Versions warmed (a run on signature-shaped inputs) for an alias",
    ["model", "version"],
)
QUEUE_DEPTH = Gauge(
    "inferis_queue_depth", "Requests enqueued and not yet answered, per partition served",
    ["partition"],
)
DRIFT_PSI = Gauge(
    "inferis_drift_psi",
    "Population stability index of the latest window against the reference, per column",
    ["model", "version", "column"],
)
WARMUP_LOADS = Counter(
    "inferis_warmup_loads_total",
    "Model loads done to warm a version for an alias (the rest were loads a request waited on)",
    ["model", "version"],
)


CACHE_LOOKUPS = Counter(
    "inferis_cache_lookups_total",
    "Prediction cache lookups of cacheable requests, by result (hit: answered without running)",
    ["model", "version", "result"],
)
CACHE_EVICTIONS = Counter(
    "inferis_cache_evictions_total",
    "Cached answers deleted to keep a model's entries per partition within max_entries",
    ["model"],
)

# The scaling signal (README "Scaling"): what waits, per partition, and how busy each
# worker is. Every worker serving a partition exports the same partition values, so
# aggregate them with max by (partition), not sum.
QUEUE_LAG = Gauge(
    "inferis_queue_lag",
    "Request entries added and not yet delivered to the consumer group, per partition "
    "served (XINFO GROUPS lag; XLEN - pending when Redis cannot tell)",
    ["partition"],
)
QUEUE_PENDING = Gauge(
    "inferis_queue_pending",
    "Request entries delivered to a worker and not yet answered (held, running or left by "
    "a worker that died), per partition served (XPENDING)",
    ["partition"],
)
OLDEST_WAIT = Gauge(
    "inferis_oldest_wait_seconds",
    "Age of the oldest request entry not yet answered (undelivered or pending), from its "
    "entry id's time on the Redis clock; 0 when there is none",
    ["partition"],
)
WORKER_BUSY = Gauge(
    "inferis_worker_busy_ratio",
    "Share of the last seconds this worker spent running requests (its run slices) "
    "rather than waiting for work",
)
WORKER_BUSY_SECONDS = Counter(
    "inferis_worker_busy_seconds",
    "Seconds this worker spent running requests (its run slices); rate() of it is the "
    "busy ratio over any window",
)


class Series:
    """The labelled children of one model version: ``labels()`` is slow per request."""

    def __init__(self, model: str, version: str) -> None:
        self._model, self._version = model, version
        self._requests: dict[str, Any] = {}
        self.queue_wait = QUEUE_WAIT.labels(model)
        self.end_to_end = END_TO_END.labels(model)
        self.inference = INFERENCE.labels(model, version)

    def requests(self, status: str) -> Any:
        child = self._requests.get(status)
        if child is None:
            child = self._requests[status] = REQUESTS.labels(self._model, self._version, status)
        return child


_SERIES: dict[tuple[str, str], Series] = {}
# Requests whose model never resolved to a stored version (unknown names) share
# one series, so arbitrary names cannot grow the metrics without bound.
UNRESOLVED_MODEL = "(unresolved)"
_MAX_SERIES = 10_000  # bound label cardinality if callers send arbitrary model names


def series(model: str, version: str) -> Series:
    found = _SERIES.get((model, version))
    if found is None:
        if len(_SERIES) >= _MAX_SERIES:
            _SERIES.clear()
        found = _SERIES[(model, version)] = Series(model, version)
    return found


UNRESOLVED = series(UNRESOLVED_MODEL, "-")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


def serve(port: int, addr: str = "127.0.0.1",
          ready: Callable[[], bool] = lambda: True) -> None:
    """Expose ``/metrics``, ``/health/live`` and ``/health/ready`` on ``addr:port``
    (loopback unless the operator opens it up), from a daemon thread. Ready means
    what ``ready()`` says: connected, with the library loaded."""
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/health/live":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"live\n"]
        if path == "/health/ready":
            ok = ready()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain")])
            return [b"ready\n" if ok else b"not ready\n"]
        return metrics_app(environ, start_response)

    server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


@dataclass
class _Counts:
    requests: int = 0
    errors: int = 0
    run_us: int = 0
    queue_us: int = 0
    cache_hits: int = 0
    cache_misses: int = 0


class ModelStats:
    """Per-model and per-version request counters, flushed every few seconds with
    ``_INFERIS_STATS`` (which also keeps this worker's heartbeat for each model it
    holds, and checks the model's canary guards)."""

    def __init__(self, consumer: str = "", interval_s: float = 2.0) -> None:
        self.consumer = consumer
        self.region = 0  # Active-Active: the worker's region index (the guards' decisions)
        self.interval_s = interval_s
        self._pending: dict[tuple[str, int], _Counts] = defaultdict(_Counts)
        self._next_flush = time.monotonic() + interval_s

    def record(self, model: str, version: int, ok: bool, run_us: int, queue_us: int) -> None:
        counts = self._pending[model, version]
        counts.requests += 1
        counts.errors += 0 if ok else 1
        counts.run_us += run_us
        counts.queue_us += queue_us

    def record_cache(self, model: str, version: int, hit: bool) -> None:
        """A cacheable request answered: from the cache (hit) or by a run (miss)."""
        counts = self._pending[model, version]
        counts.cache_hits += hit
        counts.cache_misses += not hit

    def flush_due(self, conn: redis.Redis, force: bool = False,
                  held: Callable[[], Iterable[str]] = tuple) -> None:
        """Send the counters (and a heartbeat for every model ``held()`` names) when due."""
        if not force and time.monotonic() < self._next_flush:
            return
        self._next_flush = time.monotonic() + self.interval_s
        pending, self._pending = self._pending, defaultdict(_Counts)
        per_model: dict[str, list[Any]] = {m: [] for m in held() if keys.is_model_name(m)}
        for (model, version), c in pending.items():
            if keys.is_model_name(model):  # requests for invalid names have no stats
                per_model.setdefault(model, []).extend(
                    [version, c.requests, c.errors, c.run_us, c.queue_us])
        if not per_model:
            return
        pipe = conn.pipeline(transaction=False)
        for model, counts in per_model.items():
            pipe.execute_command(
                *commands.worker_stats(model, self.consumer, counts, self.region).as_args()
            )
        _add_cache_counts(pipe, pending)
        try:
            pipe.execute()
        except Exception:
            self._keep(pending)  # counted again at the next flush
            raise

    def _keep(self, pending: dict[tuple[str, int], _Counts]) -> None:
        for model, counts in pending.items():
            mine = self._pending[model]
            mine.requests += counts.requests
            mine.errors += counts.errors
            mine.run_us += counts.run_us
            mine.queue_us += counts.queue_us
            mine.cache_hits += counts.cache_hits
            mine.cache_misses += counts.cache_misses


def _add_cache_counts(pipe: Any, pending: dict[tuple[str, int], _Counts]) -> None:
    """Cache hits and misses per model, added to its stats hash beside the counts
    ``_INFERIS_STATS`` keeps (so ``inferis model stats`` shows them)."""
    totals: dict[str, list[int]] = {}
    for (model, _), c in pending.items():
        if (c.cache_hits or c.cache_misses) and keys.is_model_name(model):
            total = totals.setdefault(model, [0, 0])
            total[0] += c.cache_hits
            total[1] += c.cache_misses
    for model, (hits, misses) in totals.items():
        stats = keys.model_key(model, "stats")
        pipe.hincrby(stats, "cache_hits", hits)
        pipe.hincrby(stats, "cache_misses", misses)


# The busy ratio covers about this long: a few export intervals, so one slow slice
# does not swing it, and a minute of idling shows within seconds.
BUSY_WINDOW_S = 10.0


@dataclass
class StreamSignal:
    """What waits on one request stream."""

    lag: int  # entries not yet delivered to the group
    pending: int  # delivered, not yet answered
    oldest_wait_s: float  # age of the oldest of either; 0 when there is none


class ScalingSignal:
    """One worker's part of the scaling signal. The hot path only adds each run
    slice's duration to a float (``ran``); ``export``, every few seconds, turns it
    into the busy ratio and reads each served partition's lag, pending count and
    oldest wait from Redis. Exporting never raises: it is telemetry, never in the
    way of serving."""

    def __init__(self, window_s: float = BUSY_WINDOW_S) -> None:
        self.window_s = window_s
        self.busy_s = 0.0
        self._counted_s = 0.0  # busy time already added to the counter
        self._samples: deque[tuple[float, float]] = deque([(time.monotonic(), 0.0)])
        self._partitions: set[str] = set()

    def ran(self, seconds: float) -> None:
        self.busy_s += seconds

    def busy_ratio(self, now: float | None = None) -> float:
        """Busy time over wall time since the newest sample at least ``window_s`` old."""
        now = time.monotonic() if now is None else now
        self._samples.append((now, self.busy_s))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        since, busy_then = self._samples[0]
        elapsed = now - since
        return min(1.0, (self.busy_s - busy_then) / elapsed) if elapsed > 0 else 0.0

    def export(
        self, streams: dict[str, str], node_of: Callable[[str], Any], now_ms: int
    ) -> None:
        """Set the gauges: ``streams`` maps each served partition's label to its
        request stream, ``node_of`` names the Redis holding a key, ``now_ms`` is
        Redis time."""
        WORKER_BUSY.set(self.busy_ratio())
        WORKER_BUSY_SECONDS.inc(self.busy_s - self._counted_s)
        self._counted_s = self.busy_s
        try:
            signals = read_signals(list(streams.values()), node_of, now_ms)
        except Exception as exc:  # telemetry: never in the way of serving
            log.debug("could not read the scaling signal: %s", exc)
            return
        for partition, stream in streams.items():
            found = signals.get(stream)
            if found is not None:
                QUEUE_LAG.labels(partition).set(found.lag)
                QUEUE_PENDING.labels(partition).set(found.pending)
                OLDEST_WAIT.labels(partition).set(found.oldest_wait_s)
        for gone in self._partitions - set(streams):  # a slot that moved away
            for gauge in (QUEUE_LAG, QUEUE_PENDING, OLDEST_WAIT):
                with contextlib.suppress(KeyError):  # never set: nothing to remove
                    gauge.remove(gone)
        self._partitions = set(streams)


def read_signals(
    streams: list[str], node_of: Callable[[str], Any], now_ms: int
) -> dict[str, StreamSignal]:
    """Lag, pending count and oldest wait of each stream: one pipelined round trip
    per node, and one more only where entries wait undelivered. A stream (or node)
    that cannot be read is left out."""
    by_node: dict[int, tuple[Any, list[str]]] = {}
    for stream in streams:
        node = node_of(stream)
        by_node.setdefault(id(node), (node, []))[1].append(stream)
    found: dict[str, StreamSignal] = {}
    for node, names in by_node.values():
        try:
            found.update(_read_node(node, names, now_ms))
        except Exception as exc:  # that shard only: the others still report
            log.debug("could not read the scaling signal of %s: %s", names, exc)
    return found


def _read_node(node: Any, streams: list[str], now_ms: int) -> dict[str, StreamSignal]:
    pipe = node.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_groups(stream)
        pipe.xpending(stream, GROUP)
        pipe.xlen(stream)
    replies = pipe.execute(raise_on_error=False)
    counts: dict[str, tuple[int, int, list[int]]] = {}
    undelivered: dict[str, str] = {}  # stream -> its group's last delivered id
    for i, stream in enumerate(streams):
        groups, pending, length = replies[3 * i : 3 * i + 3]
        if any(isinstance(r, Exception) for r in (groups, pending, length)):
            continue  # no stream or group yet: the worker makes them when it connects
        group = next((g for g in groups if _text(g["name"]) == GROUP), None)
        if group is None:
            continue
        held = int(pending["pending"])
        lag = group.get("lag")
        if lag is None:
            # Redis cannot tell the lag when entries at or after the group's last
            # delivered one were deleted while older ones are still pending (workers
            # delete what they answer, out of order): every entry left in the stream
            # is either pending or undelivered.
            lag = max(0, int(length) - held)
        ages = [_id_ms(pending["min"])] if held and pending.get("min") else []
        counts[stream] = (int(lag), held, ages)
        if lag:
            undelivered[stream] = _text(group["last-delivered-id"])
    if undelivered:
        # The first undelivered entry is the oldest one waiting to be read.
        pipe = node.pipeline(transaction=False)
        for stream, last in undelivered.items():
            pipe.xrange(stream, min="(" + last, max="+", count=1)
        for stream, first in zip(undelivered, pipe.execute(raise_on_error=False),
                                 strict=True):
            if first and not isinstance(first, Exception):
                counts[stream][2].append(_id_ms(first[0][0]))
    return {
        stream: StreamSignal(lag, held, max(0, now_ms - min(ages)) / 1000 if ages else 0.0)
        for stream, (lag, held, ages) in counts.items()
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_ms(entry_id: bytes | str) -> int:
    """A stream entry id's time: when it was added, in ms on the Redis clock."""
    return int(_text(entry_id).partition("-")[0])
