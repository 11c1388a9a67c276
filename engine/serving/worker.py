"""The worker process: read requests from partition streams, run them, answer.

A cycle reads a batch (``read_batch``), admits its entries (admission.py),
prepares and runs the requests (executor.py) and settles the batch
(completion.py): one ``_INFERIS_COMPLETE`` call that acknowledges each entry
and writes its answers atomically. That call travels in the same round trip
as the next read, so an idle worker costs one round trip per batch.

Delivery is at-least-once: an entry is acknowledged only with its answers,
so a worker that dies leaves it pending, and live workers reclaim entries
idle longer than ``claim_idle_ms`` (XAUTOCLAIM). An entry delivered more than
``max_deliveries`` times is dead-lettered and its callers told. Redis going
away is waited out, never fatal.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import redis

from inferis.client.connection import roundtrip
from inferis.client.protocol import commands, keys
from inferis.client.protocol.backoff import Backoff
from inferis.client.protocol.commands import Command, Settlement
from inferis.client.protocol.defaults import GROUP, MODELS_CHANNEL
from inferis.client.routing import Routes, is_cluster_url, must_resend
from inferis.lua import ensure_library

from .. import metrics
from ..config import ConfigError, WorkerConfig
from ..isolation.placement import Placement
from ..models.cache import ModelCache
from . import partitions
from .admission import Admitted, RawEntry, admit
from .collector import batch_delay_us
from .completion import record, settle
from .executor import Executor
from .lanes import PENDING, Lane, wait_readable
from .lifecycle import Lifecycle
from .scheduler import Held, Scheduler

log = logging.getLogger(__name__)

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)
# How often a cluster worker looks at the slot map and the library on every primary.
CLUSTER_REFRESH_S = 2.0
# How often the aliases of held models are looked at without a notice.
ALIAS_LOOK_S = 2.0


def settle_heap() -> None:
    """Leave what is alive now (the frameworks, loaded models) out of the cyclic
    collector's work (``gc.freeze``), so full collections stay short."""
    gc.collect()
    gc.freeze()


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.consumer = config.consumer or default_consumer_name()
        self._stopping = False
        self._routes: Routes | None = None
        self._redis: Any = None  # redis-py's client: a Redis, or a RedisCluster
        self._pubsub: Any = None
        self._notice_poll: Any = None
        self._cache: ModelCache | None = None
        self._executor: Executor | None = None
        self._clock_offset_ms = 0.0
        self._next_reclaim = 0.0
        self._next_refresh = 0.0
        self._stats = metrics.ModelStats(self.consumer)
        self._signal = metrics.ScalingSignal()  # lag, pending, oldest wait, busy ratio
        self._lifecycle: Lifecycle | None = None
        self._next_alias_look = 0.0
        self._behind = False  # the last batch was full: requests are waiting
        self._options = config.backend_options()  # a bad --trusted-keys fails here, at start
        self._placement = Placement(
            self._options, isolate_all=config.isolate_backends, sandbox=config.sandbox,
            run_timeout_ms=config.run_timeout_ms,
        )
        self._scheduler = Scheduler(config.read_ahead, config.slice_ms, config.hold_ms)
        self._lanes: dict[int, Lane] = {}
        self._region_index = 0  # --region's place in inferis:regions (resolve_region)
        self._leaving: set[int] = set()  # lanes whose slot moved away
        self._home = partitions.Home(config.redis_url) if is_cluster_url(config.redis_url) else None
        self.served = 0
        self.ready = False  # connected, library loaded, lanes assigned (/health/ready)

    @property
    def streams(self) -> list[str]:
        return [lane.stream for lane in self._lanes.values()]

    @property
    def _owed(self) -> bool:
        return self._scheduler.waiting > 0 or any(lane.owes for lane in self._lanes.values())

    # ---------------------------------------------------------------- lifecycle

    def stop(self, *_: object) -> None:
        """Finish the batch in hand, answer it, then exit (SIGTERM/SIGINT)."""
        self._stopping = True
        self.ready = False  # an orchestrator stops sending work here

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        if self.config.metrics_port:
            metrics.serve(self.config.metrics_port, self.config.metrics_addr,
                          ready=lambda: self.ready)
        backoff = Backoff(first=0.1, cap=2.0)
        while not self._stopping or self._owed:
            try:
                if self._redis is None:
                    self.connect()
                if self._stopping:
                    self.send_completions()
                else:
                    self.work()
                backoff.reset()
            except _REDIS_DOWN as exc:
                self.pause(backoff, "redis unavailable (%s)", exc)
                if self._redis is not None:
                    metrics.REDIS_DISCONNECTS.inc()
                self.disconnect()
            except redis.ResponseError as exc:
                # e.g. someone replaced the request stream with another type: say so
                # loudly and keep trying; a worker never dies of what is in Redis.
                self.pause(backoff, "redis refused a worker command (%s)", exc)
                self.drop_lane_connections()
            except ConfigError:
                raise  # a setting this worker cannot serve with (--region unknown): say so, exit
            except Exception:
                # A bug must not take the worker down: what it held stays pending
                # in Redis and is reclaimed, by this worker or another.
                log.exception("unexpected error in the worker loop")
                self.disconnect()
                self.pause(backoff, "restarting the worker loop%s", "")
            if self._stopping and self._owed and self._redis is None:
                break  # Redis is away while stopping: the entries stay pending
        self._placement.close()
        self.flush_stats_before_exit()
        self.disconnect()
        log.info("worker %s stopped after serving %d requests", self.consumer, self.served)

    def pause(self, backoff: Backoff, message: str, detail: object) -> None:
        delay = backoff.next()
        log.warning(message + "; retrying in %.1fs", detail, delay)
        time.sleep(delay)

    def connect(self) -> None:
        routes = Routes(
            self.config.redis_url,
            socket_timeout=max(5.0, self.config.block_ms / 1000 + 5),
            socket_connect_timeout=2.0,
            socket_keepalive=True,
            client_name=self.consumer,  # CLIENT LIST tells live workers from dead consumers
        )
        conn: Any = routes.cluster or redis.Redis(connection_pool=routes.pool_for(""))
        self._routes, self._redis = routes, conn
        self.ensure_library(thorough=True)
        self.resolve_region()
        home = self.home_client()
        sec, usec = home.time()
        self._clock_offset_ms = sec * 1000 + usec / 1000 - time.time() * 1000
        pubsub = home.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(MODELS_CHANNEL)
        self._pubsub = pubsub
        self._notice_poll = select.poll()
        self._notice_poll.register(pubsub.connection._sock, select.POLLIN)
        self.assign_partitions()
        if self._cache is None:
            self._cache = ModelCache(
                conn, self._options, self.config.max_models, self._placement.runner_for
            )
            self._cache.on_load = settle_heap
        else:
            self._cache.rebind(conn)  # and forget resolutions: notices may have been missed
        self._executor = Executor(conn, self._cache)
        self.ready = not self._stopping
        if self._lifecycle is None:
            self._lifecycle = Lifecycle(conn, self._cache, self.consumer,
                                        self.config.drift_window_s)
        else:
            self._lifecycle.rebind(conn)
        self._lifecycle.region = self._region_index
        settle_heap()
        log.info("worker %s connected to %s, serving %s; %s", self.consumer,
                 self.config.redis_url, ", ".join(self.streams) or "nothing yet",
                 self._placement.describe())

    def resolve_region(self) -> None:
        """Active-Active: --region's index in inferis:regions, which orders this
        worker's alias decisions against other regions' (docs/ACTIVE-ACTIVE.md)."""
        if not self.config.region:
            return
        listed = self.home_client().get(keys.REGIONS)
        index = keys.region_index((listed or b"").decode(), self.config.region)
        if index is None:
            raise ConfigError(
                f"--region {self.config.region}: not in {keys.REGIONS} "
                f"({(listed or b'').decode() or 'unset'}); name the regions with: "
                "inferis regions NAME,NAME,..."
            )
        self._stats.region = index
        self._region_index = index

    def home_client(self) -> redis.Redis:
        """The Redis beside this worker: the single one, or its cluster home node
        (while that is away, the first primary that answers)."""
        assert self._routes is not None
        cluster = self._routes.cluster
        if cluster is None:
            return self._redis
        home = cluster.get_node(node_name=self._home.node) if self._home else None
        candidates = ([home] if home else []) + cluster.get_primaries()
        for node in candidates:
            client = cluster.get_redis_connection(node)
            try:
                client.ping()
            except _REDIS_DOWN:
                continue
            return client
        raise redis.ConnectionError("no node of the cluster answers")

    def node_client(self, key: str) -> redis.Redis:
        """The Redis holding ``key`` (for commands redis-py does not route by key)."""
        assert self._routes is not None
        if self._routes.cluster is None:
            return self._redis
        cluster = self._routes.cluster
        return cluster.get_redis_connection(cluster.get_node_from_key(key))

    def ensure_library(self, thorough: bool = False) -> None:
        """The Functions library on every primary: Redis copies it to replicas but not
        to other shards, nor to a node that joins or comes back empty."""
        assert self._routes is not None
        clustered = self._routes.cluster is not None
        for pool in self._routes.primary_pools():
            node = redis.Redis(connection_pool=pool)
            try:
                if ensure_library(node, compare_code=thorough):
                    log.info("loaded the Functions library on %s",
                             pool.connection_kwargs.get("port"))
            except _REDIS_DOWN:
                if not clustered:
                    raise
                # a primary that is down is replaced or comes back: looked at again then

    def assign_partitions(self) -> None:
        """The partitions to serve now (their slots may have moved); lanes follow.
        A lane that goes first brings back its read and sends what it owes."""
        assert self._routes is not None
        if self.config.models:
            wanted = self.model_partitions()
        else:
            wanted = partitions.assigned(
                self.config.partitions, self._routes, self.config.cluster_partitions,
                self._home, self.config.region,
            )
        self._leaving = {n for n in self._lanes if n not in wanted}
        for number in wanted:
            if number not in self._lanes:
                lane = Lane(number, self.lane_connection, self.config.region)
                self.ensure_group(lane.stream)
                self._lanes[number] = lane
                if self._routes.cluster is not None:
                    log.info("serving %s", lane.stream)

    def retire_lanes(self) -> None:
        for number in list(self._leaving):
            lane = self._lanes[number]
            if lane.owes or lane.reading or self._scheduler.held_ids(lane.stream):
                continue  # what it read is answered there first
            lane.close()
            del self._lanes[number]
            self._leaving.discard(number)
            log.info("no longer serving %s (its slot moved)", lane.stream)

    def model_partitions(self) -> list[int]:
        """--models: the partitions the operator routed these models to (a pool of
        their own); a model not routed yet is looked for again at the next refresh."""
        assert self._redis is not None
        names = [n.strip() for n in self.config.models.split(",") if n.strip()]
        found = set()
        for name in names:
            value = self._redis.get(keys.model_key(name, "partition"))
            if value is not None and value.isdigit():
                found.add(int(value))
            else:
                log.warning("model %s is not routed to a partition of its own "
                            "(inferis model route %s --partition N)", name, name)
        return sorted(found)

    def lane_connection(self, stream: str) -> Any:
        assert self._routes is not None
        return self._routes.connection_for(stream)

    def ensure_group(self, stream: str) -> None:
        assert self._redis is not None
        try:
            # From id 0: requests enqueued before any worker existed are served.
            self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # Visible in XINFO CONSUMERS from the start, not only after a first delivery.
        self._redis.xgroup_createconsumer(stream, GROUP, self.consumer)

    def drop_lane_connections(self) -> None:
        for lane in self._lanes.values():
            with contextlib.suppress(Exception):
                lane.close()

    def disconnect(self) -> None:
        self.ready = False
        self.drop_lane_connections()
        for closeable in (self._pubsub,):
            if closeable is not None:
                with contextlib.suppress(Exception):  # already broken: nothing to release
                    closeable.close()
        if self._routes is not None:
            with contextlib.suppress(Exception):
                self._routes.disconnect()
        self._routes = self._redis = self._pubsub = self._notice_poll = None

    def flush_stats_before_exit(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(*_REDIS_DOWN, redis.RedisError):
                self._stats.flush_due(self._redis, force=True, held=self._held)

    def now_ms(self) -> int:
        """Redis server time, so deadlines set at enqueue mean the same here."""
        return int(time.time() * 1000 + self._clock_offset_ms)

    # ---------------------------------------------------------------- the cycle

    def work(self) -> int:
        """One cycle: housekeeping when due, a read on every idle lane, then serve the
        lanes that answered; returns entries handled."""
        assert self._redis is not None
        handled = 0
        now = time.monotonic()
        clustered = self._routes is not None and self._routes.cluster is not None
        try:
            self._stats.flush_due(self._redis, held=self._held)
        except _REDIS_DOWN:
            if not clustered:
                raise  # kept, flushed once the stats' shard is back
        except redis.ResponseError as exc:
            # Telemetry (the counts are kept for the next flush): never a reason to
            # drop the lanes and what their reads delivered. A primary that lost the
            # library gets it back at the next look at the cluster.
            log.warning("could not flush stats (%s); kept for the next flush", exc)
            self._next_refresh = 0.0
            if not clustered:
                self.ensure_library(thorough=True)
        assert self._lifecycle is not None
        if now >= self._next_alias_look:  # in case a notice was missed
            self._lifecycle.look_again()
            self._next_alias_look = now + ALIAS_LOOK_S
            if self.config.models:  # a model routed (or re-routed) since
                self.assign_partitions()
            self.export_queue_depth()
        if clustered and now >= self._next_refresh:
            self.follow_the_cluster()
            self._next_refresh = now + CLUSTER_REFRESH_S
        if now >= self._next_reclaim:
            handled += self.reclaim_idle()
            self._next_reclaim = now + self.config.claim_idle_ms / 2000
        self._behind = False
        for stream, raw in self.read_batch():
            handled += self.take_in(stream, raw)
            self._behind |= len(raw) >= self.config.read_count
        self.run_slice()
        self._behind |= self._scheduler.waiting > 0
        self._lifecycle.warm_what_aliases_need()
        return handled

    def export_queue_depth(self) -> None:
        """Each served partition's queue count (what the Functions keep), as a gauge
        any orchestrator can scale on."""
        assert self._redis is not None
        numbers = list(self._lanes)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for number in numbers:
                pipe.hget(keys.partition_config(number, self.config.region), "queued")
            for number, queued in zip(numbers, pipe.execute(), strict=True):
                metrics.QUEUE_DEPTH.labels(str(number)).set(int(queued or 0))
        except redis.RedisError as exc:  # telemetry: never in the way of serving
            log.debug("could not read queue depths: %s", exc)
        self._signal.export(
            {str(n): lane.stream for n, lane in self._lanes.items()}, self.node_client,
            self.now_ms(),
        )

    def _held(self) -> set[str]:
        return self._cache.held_names() if self._cache is not None else set()

    def follow_the_cluster(self) -> None:
        """Slots move (resharding, failover) and nodes come and go: look again at the
        slot map, keep the library on every primary, serve what is beside us now."""
        assert self._routes is not None
        self._routes.refresh()
        self.ensure_library()
        self.assign_partitions()

    def read_batch(self) -> list[tuple[str, list[RawEntry]]]:
        """Send each idle lane what it owes and a read (one write each), then take the
        batches of the lanes that answer. With requests held the read does not block,
        nor does the wait: what has not answered yet is taken next cycle."""
        self.retire_lanes()
        busy, full = self._scheduler.waiting > 0, self._scheduler.full
        for number, lane in self._lanes.items():
            if lane.reading or not lane.ready:
                continue
            with self.lane_io(lane):
                if number in self._leaving or full:
                    self.send_owed(lane)
                else:
                    lane.write_read(
                        self.consumer, self.config.read_count,
                        None if busy else self.config.block_ms,
                    )
        # Completions are out: the shadow runs and logs of the last batches now.
        assert self._lifecycle is not None
        self._lifecycle.flush(backlogged=self._behind)
        if full:
            return []  # holding all it may: run, read later
        if not busy and not any(lane.reading for lane in self._lanes.values()):
            # nothing to read from (yet, or its lanes wait to retry): look again later
            retries = [lane.retry_at for lane in self._lanes.values() if not lane.ready]
            pause = self.config.block_ms / 1000
            if retries:
                pause = min(pause, max(0.0, min(retries) - time.monotonic()))
            time.sleep(pause)
            return []
        batches = []
        wait_ms = 0 if busy else self.config.block_ms + 1000
        for lane in wait_readable(self._lanes.values(), wait_ms):
            with self.lane_io(lane):
                self.check_settled(lane)
                reply = lane.take_read()
                if reply is PENDING:
                    continue
                if lane.failures:
                    log.info("%s is served again", lane.stream)
                lane.succeeded()
                if must_resend(reply, True) or _stream_moved_away(reply):
                    lane.close()  # the slot moved: find where it is now
                    self._next_refresh = 0.0
                    continue
                if isinstance(reply, redis.ResponseError):
                    if "NOGROUP" in str(reply):  # Redis came back without our data
                        self.ensure_library(thorough=True)
                        self.ensure_group(lane.stream)
                        continue
                    raise reply
                for _, got in reply or ():
                    batches.append((lane.stream, _entries(got)))
        if batches:
            self.drain_notices()  # a version stored before these requests is seen by them
        return batches

    @contextlib.contextmanager
    def lane_io(self, lane: Lane) -> Iterator[None]:
        """In a cluster, a broken connection is that lane's alone: its node may be
        down while the others serve on. The lane keeps what it owes, waits, and the
        slot map is looked at again soon (a replica may be taking over)."""
        try:
            yield
        except _REDIS_DOWN as exc:
            if self._routes is None or self._routes.cluster is None:
                raise  # a single Redis: the whole worker waits it out
            if not lane.failures:  # once per outage, not once per retry
                log.warning("lost %s's connection (%s); retrying it", lane.stream, exc)
            lane.failed()
            if self._stopping and lane.owes:
                log.warning("%s: leaving its last batch pending for another worker", lane.stream)
                lane.unsent = []
            self._next_refresh = min(self._next_refresh, time.monotonic() + 0.5)

    def check_settled(self, lane: Lane) -> None:
        self.keep_unsettled(lane, lane.take_settled())

    def keep_unsettled(self, lane: Lane, settled: list[tuple[Command, Any]]) -> None:
        """A completion refused because its slot moved (or the node has no library
        yet) stays owed and goes again, to where the slot is: completions are
        idempotent (acknowledge first, write only what was acknowledged)."""
        again = [command for command, reply in settled if must_resend(reply, True)]
        for command, reply in settled:
            if isinstance(reply, Exception) and command not in again:
                log.error("completing a batch on %s failed: %s", lane.stream, reply)
        if again:
            lane.unsent = [*again, *lane.unsent]
            self._next_refresh = 0.0
            if not lane.reading:
                lane.close()  # connect again, to the slot's owner now

    def send_completions(self) -> None:
        """Send what the lanes owe without reading more (stopping); a read that is out
        is taken first, its batch served and answered too."""
        for lane in self._lanes.values():
            with self.lane_io(lane):
                if lane.reading:
                    self.check_settled(lane)
                    reply = lane.finish_read()
                    if reply and not isinstance(reply, Exception):
                        for _, got in reply:
                            self.take_in(lane.stream, _entries(got))
        while self._scheduler.waiting:  # what is held is run and answered before leaving
            self.run_slice()
        for lane in self._lanes.values():
            with self.lane_io(lane):
                self.send_owed(lane)

    def send_owed(self, lane: Lane) -> None:
        if not lane.unsent:
            return
        if lane.conn is None:
            lane.conn = self.lane_connection(lane.stream)
        owed, lane.unsent = lane.unsent, []
        replies = roundtrip(lane.conn, [c.as_args() for c in owed])
        self.keep_unsettled(lane, list(zip(owed, replies, strict=True)))

    def drain_notices(self) -> None:
        """Forget moving resolutions named by MODELSTORE/MODELDEL notices. A drain
        leaves nothing buffered, so a poll of the socket says whether there is more."""
        assert self._pubsub is not None and self._cache is not None
        if self._notice_poll is not None and not self._notice_poll.poll(0):
            return
        while True:
            message = self._pubsub.get_message(timeout=0)
            if message is None:
                return
            if message.get("type") == "message":
                name = message["data"].decode()
                self._cache.invalidate(name)
                if self._executor is not None:  # its cache settings may have changed
                    self._executor.predictions.invalidate(name)
                if self._lifecycle is not None:
                    self._lifecycle.changed(name)

    def take_in(
        self, stream: str, raw: list[RawEntry], deliveries: dict[str, int] | None = None
    ) -> int:
        """Admit and prepare one stream's entries and hold them for their turn; what
        cannot run (dead letters, requests that failed their checks) is settled now."""
        assert self._executor is not None
        # a lane recovering its own pending entries (id 0) sees those held here too
        raw = [(i, f) for i, f in raw if not self._scheduler.holds(stream, i)]
        started_ms = self.now_ms()
        batch = admit(stream, raw, self.config.max_deliveries, deliveries)
        self._executor.prepare(batch.requests, started_ms)
        if deliveries is None and not self._scheduler.waiting:
            self.collect_more(stream, batch)
        failed = self._scheduler.add(batch.entries, batch.requests)
        if failed or batch.settled:
            self.answer(stream, failed, batch.settled, started_ms)
        return len(raw)

    def run_slice(self) -> None:
        """Run held requests in turns for one slice; answer the entries that finished
        (the settlements go out with each lane's next read)."""
        if not self._scheduler.waiting:
            return
        assert self._executor is not None
        started_ms, started = self.now_ms(), time.perf_counter()
        finished, ran = self._scheduler.run_slice(self._executor.run, self.now_ms)
        by_stream: dict[str, list[Held]] = {}
        for held in finished:
            by_stream.setdefault(held.entry.stream, []).append(held)
        for stream, entries in by_stream.items():
            self.answer(stream, entries, [], started_ms)
        metrics.BATCH_SIZE.observe(len(ran))
        self._signal.ran(time.perf_counter() - started)

    def answer(
        self, stream: str, finished: list[Held], dead: list[Settlement], started_ms: int
    ) -> None:
        requests = [r for held in finished for r in held.requests]
        command = settle(stream, [h.entry for h in finished], requests, dead, started_ms)
        assert self._executor is not None
        if command is not None:
            lane = self._lane_of(stream)
            # The answers to cache follow the completion, in its write: no round trip.
            lane.unsent += [command, *self._executor.predictions.writes(requests, self.now_ms())]
        record(requests, started_ms, self.now_ms(), self._stats)
        assert self._lifecycle is not None
        self._lifecycle.after_batch(requests)
        self.served += len(requests)

    def _lane_of(self, stream: str) -> Lane:
        for lane in self._lanes.values():
            if lane.stream == stream:
                return lane
        raise KeyError(stream)

    def collect_more(self, stream: str, batch: Admitted) -> None:
        """A batching model's batch is not full: wait up to its max_queue_delay for more."""
        assert self._redis is not None and self._executor is not None
        delay_us = batch_delay_us(batch.requests)
        if not delay_us:
            return
        block = delay_us // 1000 or None  # under a millisecond: take what is there now
        reply = self._redis.xreadgroup(
            GROUP, self.consumer, {stream: ">"}, count=self.config.read_count, block=block
        )
        raw = [(_text(i), f) for _, got in reply or () for i, f in got if f]
        more = admit(stream, raw, self.config.max_deliveries)
        self._executor.prepare(more.requests, self.now_ms())
        batch.extend(more)

    def reclaim_idle(self) -> int:
        """Take over entries another (dead or stuck) consumer left idle, and serve them."""
        assert self._redis is not None
        handled = 0
        clustered = self._routes is not None and self._routes.cluster is not None
        for stream in self.streams:
            try:
                handled += self.reclaim_stream(stream)
            except (*_REDIS_DOWN, redis.exceptions.ClusterDownError):
                if not clustered:
                    raise
                # this stream's shard is failing over: its lane retries, and so do we
        return handled

    def reclaim_stream(self, stream: str) -> int:
        assert self._redis is not None
        try:
            self.touch_held(stream)
            _, entries, *_ = self._redis.xautoclaim(
                stream, GROUP, self.consumer,
                min_idle_time=self.config.claim_idle_ms, start_id="0-0", count=256,
            )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                self.ensure_group(stream)
                return 0
            raise
        self.forget_dead_consumers(stream)
        live = [
            (_text(i), f) for i, f in entries
            if f and not self._scheduler.holds(stream, _text(i))
        ]
        if not live:
            return 0
        log.info("reclaimed %d idle entries on %s", len(live), stream)
        metrics.RECLAIMED.inc(len(live))
        return self.take_in(stream, live, self.delivery_counts(stream, live))

    def touch_held(self, stream: str) -> None:
        """Entries held for their turn are not idle: claiming them to ourselves again
        (JUSTID: no delivery counted) resets their idle time, so that no worker, this
        one included, reclaims them as abandoned."""
        assert self._redis is not None
        held = self._scheduler.held_ids(stream)
        for start in range(0, len(held), 1000):
            self._redis.xclaim(
                stream, GROUP, self.consumer, 0, held[start : start + 1000], justid=True
            )

    def forget_dead_consumers(self, stream: str) -> None:
        """Remove consumers of workers that are gone: they own nothing, have been
        silent a while, and no connection carries their name (each worker names its
        connections after its consumer), so the group lists the live ones."""
        min_idle = max(4 * self.config.claim_idle_ms, 10 * self.config.block_ms)
        node = self.node_client(stream)
        try:
            live = sorted({c["name"] for c in node.client_list() if c.get("name")})
            command = commands.prune_consumers(stream, min_idle, live)
            gone = node.execute_command(*command.as_args())
        except redis.ResponseError as exc:  # housekeeping: never in the way of serving
            log.warning("could not forget dead consumers on %s: %s", stream, exc)
            return
        if gone:
            log.info("forgot %d dead consumer(s) on %s: %s", len(gone), stream,
                     ", ".join(_text(g) for g in gone))

    def delivery_counts(self, stream: str, entries: list[RawEntry]) -> dict[str, int]:
        assert self._redis is not None
        ids = [entry_id for entry_id, _ in entries]
        pending = self._redis.xpending_range(
            stream, GROUP, min=min(ids, key=_id_key), max=max(ids, key=_id_key),
            count=len(ids) + 64, consumername=self.consumer,
        )
        return {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_moved_away(reply: object) -> bool:
    """A blocked read ended because its stream key left the node (MIGRATE during a
    reshard deletes it at the source)."""
    return isinstance(reply, redis.ResponseError) and str(reply).startswith("UNBLOCKED")


def _entries(raw: Any) -> list[RawEntry]:
    """Entries of one stream from a raw XREADGROUP reply ([id, [field, value, ...]]);
    deleted ones (nil fields) skipped."""
    out = []
    for entry_id, fields in raw:
        if fields:
            it = iter(fields)
            out.append((_text(entry_id), dict(zip(it, it, strict=True))))
    return out


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
