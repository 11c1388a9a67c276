"""The worker process: read requests from partition streams, run, answer.

Delivery is at-least-once. An entry is acknowledged by the same atomic call
that writes its outputs and reply, so a worker that dies leaves it pending;
live workers reclaim entries idle longer than ``claim_idle_ms`` (XAUTOCLAIM).
An entry delivered more than ``max_deliveries`` times is dead-lettered and its
caller told. Redis going away is waited out, never fatal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from inferis.client import keys
from inferis.client.connection import sync_connection
from inferis.client.errors import DeadLetteredError, InferisError

from . import metrics
from .backends.base import BackendOptions
from .executor import Executor, Outcome
from .inference import InferenceThread, Job
from .isolation import IsolatedRunner
from .library import ensure_library
from .models import ModelCache
from .replies import complete_command, deadletter_command
from .requests import RunRequest, parse_entry, reply_target

log = logging.getLogger(__name__)

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)
UNRESOLVED = "(unresolved)"


@dataclass
class WorkerConfig:
    redis_url: str = "redis://localhost:6379"
    partitions: list[int] = field(default_factory=lambda: [0])
    consumer: str = ""
    read_count: int = 64
    block_ms: int = 500
    claim_idle_ms: int = 30_000
    max_deliveries: int = 3
    max_models: int = 32
    metrics_port: int = 0  # 0: no /metrics endpoint
    metrics_addr: str = "127.0.0.1"
    inference_thread: bool = True  # run models on a thread while the I/O loop reads
    isolate_backends: bool = False  # run models in a child process, cut off when hung
    run_timeout_ms: int = 30_000  # default execution timeout when isolated
    backend: BackendOptions = field(default_factory=BackendOptions)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.consumer = config.consumer or default_consumer_name()
        self.streams = [keys.request_stream(p) for p in config.partitions]
        self._stopping = False
        self._redis: redis.Redis | None = None
        self._pubsub: Any = None
        self._cache: ModelCache | None = None
        self._executor: Executor | None = None
        self._clock_offset_ms = 0.0
        self._next_reclaim = 0.0
        self._stats = metrics.ModelStats()
        self._inference: InferenceThread | None = None
        self._runner = (
            IsolatedRunner(config.backend, config.run_timeout_ms)
            if config.isolate_backends else None
        )
        self.served = 0

    # ---------------------------------------------------------------- lifecycle

    def stop(self, *_: object) -> None:
        """Finish the batch in hand, then exit (SIGTERM/SIGINT)."""
        self._stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        if self.config.metrics_port:
            metrics.serve(self.config.metrics_port, self.config.metrics_addr)
        log.info("worker %s serving %s", self.consumer, ", ".join(self.streams))
        if self.config.inference_thread:
            self._inference = InferenceThread(
                lambda prepared: self._require_executor().run(prepared),
                self._finish,
                self._connection,
            )
        backoff = 0.1
        while not self._stopping:
            try:
                if self._redis is None:
                    self._connect()
                self.step()
                backoff = 0.1
            except _REDIS_DOWN as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff)
                if self._redis is not None:
                    metrics.REDIS_DISCONNECTS.inc()
                self._disconnect()
                backoff = _pause(backoff)
            except redis.ResponseError as exc:
                # e.g. someone replaced the request stream with another type: say so
                # loudly and keep trying; a worker never dies of what is in Redis.
                log.error("redis refused a worker command (%s); retrying in %.1fs", exc, backoff)
                backoff = _pause(backoff)
            except Exception:
                # A bug must not take the worker down: what it held stays pending
                # in Redis and is reclaimed, by this worker or another.
                log.exception("unexpected error in the worker loop; retrying in %.1fs", backoff)
                self._disconnect()
                backoff = _pause(backoff)
        if self._inference is not None:
            self._inference.stop()  # answers everything it was handed
            self._inference = None
        if self._runner is not None:
            self._runner.close()
        self._flush_stats_before_exit()
        self._disconnect()
        log.info("worker %s stopped after serving %d requests", self.consumer, self.served)

    def _connection(self) -> redis.Redis:
        return sync_connection(
            self.config.redis_url,
            socket_timeout=max(5.0, self.config.block_ms / 1000 + 5),
            socket_connect_timeout=2.0,
            socket_keepalive=True,
        )

    def _require_executor(self) -> Executor:
        assert self._executor is not None
        return self._executor

    def _connect(self) -> None:
        conn = self._connection()
        ensure_library(conn)
        self._ensure_groups(conn)
        sec, usec = conn.time()
        self._clock_offset_ms = sec * 1000 + usec / 1000 - time.time() * 1000
        pubsub = conn.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.MODELS_CHANNEL)
        self._redis, self._pubsub = conn, pubsub
        if self._cache is None:
            self._cache = ModelCache(
                conn, self.config.backend, self.config.max_models, self._runner
            )
        else:
            self._cache.rebind(conn)  # and forget resolutions: notices may have been missed
        self._executor = Executor(conn, self._cache)
        log.info("connected to %s", self.config.redis_url)

    def _flush_stats_before_exit(self) -> None:
        if self._redis is None:
            return
        with contextlib.suppress(*_REDIS_DOWN):
            self._stats.flush_due(self._redis, force=True)

    def _disconnect(self) -> None:
        for closeable in (self._pubsub, self._redis):
            if closeable is not None:
                with contextlib.suppress(Exception):  # already broken: nothing to release
                    closeable.close()
        self._redis = self._pubsub = None

    def _ensure_groups(self, conn: redis.Redis) -> None:
        for stream in self.streams:
            try:
                # From id 0: requests enqueued before any worker existed are served.
                conn.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            # Visible in XINFO CONSUMERS from the start, not only after a first delivery.
            conn.xgroup_createconsumer(stream, keys.GROUP, self.consumer)

    def now_ms(self) -> int:
        """Redis server time, so deadlines set by MODELRUN mean the same here."""
        return int(time.time() * 1000 + self._clock_offset_ms)

    # ---------------------------------------------------------------- loop

    def step(self) -> int:
        """One read-run-answer cycle; returns how many entries it handled."""
        assert self._redis is not None
        self._drain_notices()
        self._stats.flush_due(self._redis)
        handled = 0
        if time.monotonic() >= self._next_reclaim:
            handled += self._reclaim()
            self._next_reclaim = time.monotonic() + self.config.claim_idle_ms / 2000
        try:
            reply = self._redis.xreadgroup(
                keys.GROUP,
                self.consumer,
                {s: ">" for s in self.streams},
                count=self.config.read_count,
                block=self.config.block_ms,
            )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis came back without our data
                ensure_library(self._redis)
                self._ensure_groups(self._redis)
                return handled
            raise
        for raw_stream, entries in reply or []:
            stream = raw_stream.decode()
            handled += self._handle(stream, [(i.decode(), f) for i, f in entries if f])
        return handled

    def _drain_notices(self) -> None:
        assert self._pubsub is not None and self._cache is not None
        while True:
            message = self._pubsub.get_message(timeout=0)
            if message is None:
                return
            if message.get("type") == "message":
                self._cache.invalidate(message["data"].decode())

    def _handle(
        self,
        stream: str,
        entries: list[tuple[str, dict[bytes, bytes]]],
        deliveries: dict[str, int] | None = None,
    ) -> int:
        assert self._redis is not None and self._executor is not None
        commands, runnable = self._admit(stream, entries, deliveries or {})
        now = self.now_ms()
        outcomes, prepared = self._executor.prepare(runnable, now)
        delay_us = self._executor.batch_delay_us(prepared) if deliveries is None else 0
        if delay_us:
            # A batch is not full yet: wait up to the model's max_queue_delay for more.
            more = self._read_more(stream, delay_us)
            extra_commands, extra = self._admit(stream, more, {})
            commands += extra_commands
            extra_outcomes, extra_prepared = self._executor.prepare(extra, self.now_ms())
            outcomes += extra_outcomes
            prepared += extra_prepared
            entries = entries + more
        job = Job(outcomes, prepared, now, commands)
        if self._inference is not None:
            self._inference.submit(job)
        else:
            self._executor.run(prepared)
            self._finish(job, self._redis)
        metrics.BATCH_SIZE.observe(len(entries))
        self.served += len(entries)
        return len(entries)

    def _finish(self, job: Job, conn: redis.Redis) -> None:
        """Write a batch's answers (and dead letters) in one round trip; record it."""
        commands = list(job.commands)
        if job.outcomes:
            commands.append(
                complete_command(
                    [(o, max(0, job.started_ms - o.request.enqueued_ms) * 1000)
                     for o in job.outcomes]
                )
            )
        if commands:
            pipe = conn.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            for result in pipe.execute(raise_on_error=False):
                if isinstance(result, Exception):
                    log.error("completing a request failed: %s", result)
        self._record(job.outcomes, job.started_ms)

    def _admit(
        self,
        stream: str,
        entries: list[tuple[str, dict[bytes, bytes]]],
        deliveries: dict[str, int],
    ) -> tuple[list[list[Any]], list[RunRequest]]:
        """Parse entries; malformed and poison ones become dead-letter commands."""
        commands: list[list[Any]] = []
        runnable: list[RunRequest] = []
        for entry_id, fields in entries:
            try:
                request = parse_entry(stream, entry_id, fields)
            except InferisError as exc:
                commands.append(self._deadletter_malformed(stream, entry_id, fields, exc))
                continue
            count = deliveries.get(entry_id, 1)
            if count > self.config.max_deliveries:
                commands.append(self._deadletter_poison(request, count))
                continue
            runnable.append(request)
        return commands, runnable

    def _read_more(self, stream: str, delay_us: int) -> list[tuple[str, dict[bytes, bytes]]]:
        assert self._redis is not None
        block = delay_us // 1000 or None  # under a millisecond: take what is there now
        reply = self._redis.xreadgroup(
            keys.GROUP, self.consumer, {stream: ">"}, count=self.config.read_count, block=block
        )
        return [(i.decode(), f) for _, got in reply or [] for i, f in got if f]

    def _record(self, outcomes: list[Outcome], started_ms: int) -> None:
        answered_ms = self.now_ms()
        for outcome in outcomes:
            request = outcome.request
            status = "ok" if outcome.error is None else outcome.error.code
            queue_s = max(0, started_ms - request.enqueued_ms) / 1000
            # Requests that never resolved to a stored version (unknown names) share
            # one series, so arbitrary names cannot grow the metrics without bound.
            model = request.model if outcome.version else UNRESOLVED
            series = metrics.series(model, str(outcome.version or "-"))
            series.requests(status).inc()
            series.queue_wait.observe(queue_s)
            series.end_to_end.observe(max(0, answered_ms - request.enqueued_ms) / 1000)
            if outcome.error is None:
                series.inference.observe(outcome.run_us / 1e6)
            if outcome.version:
                self._stats.record(
                    request.model, outcome.error is None, outcome.run_us, int(queue_s * 1e6)
                )

    def _deadletter_poison(self, request: RunRequest, count: int) -> list[Any]:
        error = DeadLetteredError(
            f"request {request.rid} was delivered {count} times without an answer "
            f"(a worker died or hung running it); moved to the dead-letter stream"
        )
        log.warning("dead-lettering %s on %s: %s", request.entry_id, request.stream, error)
        metrics.DEAD_LETTERED.labels("poison").inc()
        return deadletter_command(
            request, self._deadletter_key(request.stream), Outcome(request, error), "poison", count
        )

    def _deadletter_malformed(
        self, stream: str, entry_id: str, fields: dict[bytes, bytes], exc: InferisError
    ) -> list[Any]:
        rid, reply_key, mode = reply_target(stream, entry_id, fields)
        request = RunRequest(
            stream, entry_id, rid, "", "", 0, 0, 0, reply_key, mode, [], []
        )
        log.warning("dead-lettering malformed entry %s on %s: %s", entry_id, stream, exc)
        metrics.DEAD_LETTERED.labels("malformed").inc()
        return deadletter_command(
            request, self._deadletter_key(stream), Outcome(request, exc), f"malformed: {exc}", 1
        )

    @staticmethod
    def _deadletter_key(stream: str) -> str:
        return f"{keys.base_of(stream)}:deadletter"

    def _reclaim(self) -> int:
        """Take over entries another (dead or stuck) consumer left idle."""
        assert self._redis is not None
        handled = 0
        for stream in self.streams:
            try:
                _, entries, *_ = self._redis.xautoclaim(
                    stream, keys.GROUP, self.consumer,
                    min_idle_time=self.config.claim_idle_ms, start_id="0-0", count=256,
                )
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self._ensure_groups(self._redis)
                    continue
                raise
            live = [(i.decode(), f) for i, f in entries if f]
            if not live:
                continue
            log.info("reclaimed %d idle request(s) on %s", len(live), stream)
            metrics.RECLAIMED.inc(len(live))
            handled += self._handle(stream, live, self._delivery_counts(stream, live))
        return handled

    def _delivery_counts(
        self, stream: str, entries: list[tuple[str, dict[bytes, bytes]]]
    ) -> dict[str, int]:
        assert self._redis is not None
        ids = [entry_id for entry_id, _ in entries]
        pending = self._redis.xpending_range(
            stream, keys.GROUP, min=min(ids, key=_id_key), max=max(ids, key=_id_key),
            count=len(ids) + 64, consumername=self.consumer,
        )
        return {
            p["message_id"].decode(): int(p["times_delivered"]) for p in pending
        }


def _pause(backoff: float) -> float:
    """Sleep ``backoff`` seconds; return the next, doubled up to 2 s."""
    time.sleep(backoff)
    return min(backoff * 2, 2.0)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
