"""Workers that follow the load: grow when the queue does, shrink after a quiet spell.

The signal is what the Functions already keep: each partition's count of requests
queued or running (``{inferis:N}:config queued``), and how long the oldest
request no worker has read yet has waited (its stream entry id is its enqueue
time on the Redis clock). The pool grows at once, as many workers as the queue
asks for; it shrinks one worker at a time, only after the load has stayed low
for the cool-down, and a worker let go drains (runs and answers what it holds)
before it exits, so nothing is lost and nothing is answered twice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from inferis.client.protocol import keys
from inferis.client.protocol.defaults import GROUP

from .supervisor import WorkerPool

log = logging.getLogger(__name__)


@dataclass
class Policy:
    min_workers: int
    max_workers: int
    # Requests queued or running per worker beyond which the pool grows.
    target_per_worker: int = 64
    # An unread request older than this grows the pool by one, whatever the count.
    target_wait_ms: float = 250.0
    # How long the load must ask for fewer workers before one is let go.
    cooldown_s: float = 30.0
    _low_since: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers:
            raise ValueError(
                f"workers must be MIN:MAX with 1 <= MIN <= MAX, got "
                f"{self.min_workers}:{self.max_workers}"
            )
        if self.target_per_worker < 1:
            raise ValueError(f"the scale target must be at least 1 request per worker, got "
                             f"{self.target_per_worker}")
        for name, value in (("wait", self.target_wait_ms), ("cool-down", self.cooldown_s)):
            if not 0 <= value < math.inf:  # also refuses nan
                raise ValueError(f"the scale {name} must be a finite number >= 0, got {value}")

    def wanted(self, current: int, queued: int, oldest_wait_ms: float, now: float) -> int:
        """The pool size to have now."""
        want = math.ceil(queued / self.target_per_worker) if queued > 0 else self.min_workers
        if oldest_wait_ms > self.target_wait_ms:
            want = max(want, current + 1)
        want = min(self.max_workers, max(self.min_workers, want))
        if want >= current:
            self._low_since = None
            return want
        if self._low_since is None:
            self._low_since = now
        if now - self._low_since < self.cooldown_s:
            return current
        self._low_since = now  # the next one waits a cool-down of its own
        return current - 1


@dataclass
class Load:
    queued: int = 0  # requests queued or running, summed over the partitions
    oldest_wait_ms: float = 0.0  # the longest an unread request has waited


def read_load(conn: redis.Redis, partitions: Sequence[int], region: str = "") -> Load:
    """One pipelined look at every partition's count, group position and next entry."""
    pipe = conn.pipeline(transaction=False)
    for number in partitions:
        pipe.hget(keys.partition_config(number, region), "queued")
        pipe.execute_command("XINFO", "GROUPS", keys.request_stream(number, region))
    replies = pipe.execute(raise_on_error=False)
    load = Load()
    sec, usec = conn.time()
    now_ms = sec * 1000 + usec / 1000
    nexts = []
    for index, number in enumerate(partitions):
        queued, groups = replies[2 * index], replies[2 * index + 1]
        if not isinstance(queued, Exception):
            load.queued += int(queued or 0)
        delivered = _last_delivered(groups)
        if delivered is not None:
            nexts.append((keys.request_stream(number, region), delivered))
    if nexts:
        pipe = conn.pipeline(transaction=False)
        for stream, delivered in nexts:
            pipe.xrange(stream, min=f"({delivered}", count=1)
        for entries in pipe.execute(raise_on_error=False):
            if entries and not isinstance(entries, Exception):
                enqueued_ms = int(entries[0][0].split(b"-")[0])
                load.oldest_wait_ms = max(load.oldest_wait_ms, now_ms - enqueued_ms)
    return load


def _last_delivered(groups: object) -> str | None:
    if isinstance(groups, Exception) or not isinstance(groups, list):
        return None  # no stream or no group yet
    for group in groups:
        info = group if isinstance(group, dict) else dict(zip(group[::2], group[1::2],
                                                               strict=True))
        name = info.get("name", info.get(b"name"))
        if name in (GROUP, GROUP.encode()):
            last = info.get("last-delivered-id", info.get(b"last-delivered-id"))
            return last.decode() if isinstance(last, bytes) else str(last)
    return None


class Autoscaler:
    """Looks at the load every ``interval_s`` and resizes ``pool`` by ``policy``."""

    def __init__(
        self, pool: WorkerPool, conn: redis.Redis, policy: Policy,
        partitions: Sequence[int] = (0,), region: str = "", interval_s: float = 1.0,
    ) -> None:
        self.pool, self.conn, self.policy = pool, conn, policy
        self.partitions, self.region, self.interval_s = list(partitions), region, interval_s
        self.history: list[tuple[float, int, Load]] = []  # (time, workers, load)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autoscaler", daemon=True)

    def step(self) -> int:
        """One look and one decision; returns the pool size now."""
        try:
            load = read_load(self.conn, self.partitions, self.region)
        except redis.RedisError as exc:  # Redis away: keep what runs, look again later
            log.warning("autoscaler cannot read the load: %s", exc)
            return len(self.pool.processes)
        current = len(self.pool.processes)
        wanted = self.policy.wanted(current, load.queued, load.oldest_wait_ms, time.monotonic())
        if wanted != current:
            log.info("autoscaler: %d -> %d workers (%d queued, oldest unread %.0f ms)",
                     current, wanted, load.queued, load.oldest_wait_ms)
        while len(self.pool.processes) < wanted:
            self.pool.grow()
        while len(self.pool.processes) > wanted:
            self.pool.shrink()
        self.history.append((time.monotonic(), len(self.pool.processes), load))
        return len(self.pool.processes)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.step()

    def start(self) -> Autoscaler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def parse_range(text: str) -> tuple[int, int]:
    """``--workers`` as ``N`` (fixed) or ``MIN:MAX`` (autoscaled)."""
    low, sep, high = text.partition(":")
    try:
        bounds = (int(low), int(high)) if sep else (int(low), int(low))
    except ValueError:
        raise ValueError(f"--workers takes N or MIN:MAX, got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise ValueError(f"--workers takes N or MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return bounds
