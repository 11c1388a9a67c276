"""Workers that follow the load: under a stepped load (low, burst, low) the pool grows
to its maximum and shrinks back after the cool-down; workers let go drain first, so
every request is answered, once."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import redis
import uvloop

from inferis.client import AsyncClient, Client
from inferis.engine.local.autoscale import Autoscaler, Policy, parse_range
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.engine.local.supervisor import WorkerPool

from ..models import slow_model

X = np.ones((128, 128), np.float32)


async def _load(url: str, phases: list[tuple[float, int]]) -> list[tuple[int, float, bool]]:
    """Closed loops of ``in_flight`` callers per phase; (phase, latency s, ok) per call."""
    calls: list[tuple[int, float, bool]] = []
    async with AsyncClient(url, timeout_ms=60_000) as client:
        for index, (seconds, in_flight) in enumerate(phases):
            ends = time.monotonic() + seconds

            async def caller(phase: int = index, ends: float = ends) -> None:
                while time.monotonic() < ends:
                    started = time.monotonic()
                    result = await client.run("slow", {"X": X})
                    calls.append((phase, time.monotonic() - started, result.error is None))

            await asyncio.gather(*(caller() for _ in range(in_flight)))
        assert client.unmatched_answers == 0  # nothing answered twice
    return calls


def test_workers_grow_under_a_burst_and_shrink_after_it(
    redis_server: EmbeddedRedis, r: redis.Redis
) -> None:
    with Client(redis_server.url) as client:
        client.modelstore("slow", "onnx", slow_model(steps=100, size=128))  # ~2 ms a run
    pool = WorkerPool(redis_server.url, 1, ["--log-level", "WARNING"])
    pool.start()
    policy = Policy(1, 3, target_per_worker=16, target_wait_ms=100, cooldown_s=1.5)
    scaler = Autoscaler(pool, r, policy, interval_s=0.25).start()
    watching = True

    def watch() -> None:
        while watching:
            pool.watch()
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        calls = uvloop.run(_load(redis_server.url, [(1.5, 2), (5.0, 96), (3.0, 2)]))
        deadline = time.monotonic() + 20
        while (len(pool.processes) > 1 or pool.leaving) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        scaler.stop()
        watching = False
        watcher.join(5)
        pool.stop()
    sizes = [size for _, size, _ in scaler.history]
    burst = sorted(latency for phase, latency, _ in calls if phase == 1)
    p99 = burst[int(len(burst) * 0.99)] * 1000
    print(f"autoscale: workers {min(sizes)}..{max(sizes)}, {len(calls)} calls, "
          f"burst p99 {p99:.0f} ms, drained exits {pool.drained}")
    assert max(sizes) == 3 and sizes[-1] == 1
    assert all(ok for _, _, ok in calls)  # every request answered, none an error
    assert pool.drained and all(code == 0 for code in pool.drained)  # let go, and drained
    assert int(r.hget("{inferis:0}:config", "queued") or 0) == 0


def test_policy_grows_at_once_and_shrinks_one_at_a_time_after_the_cooldown() -> None:
    policy = Policy(1, 4, target_per_worker=10, target_wait_ms=100, cooldown_s=5)
    assert policy.wanted(1, 35, 0, now=0) == 4  # as many as the queue asks, at once
    assert policy.wanted(4, 0, 0, now=1) == 4  # low: the cool-down starts
    assert policy.wanted(4, 0, 0, now=5.9) == 4
    assert policy.wanted(4, 0, 0, now=6.1) == 3  # one goes...
    assert policy.wanted(3, 0, 0, now=7) == 3  # ...and the next waits a cool-down
    assert policy.wanted(3, 0, 500, now=8) == 4  # an old unread request: one more
    assert policy.wanted(4, 100, 0, now=9) == 4  # never above MAX
    assert parse_range("2") == (2, 2) and parse_range("1:8") == (1, 8)
    for bad in ("0:2", "3:2", "x", "1:"):
        with pytest.raises(ValueError):
            parse_range(bad)
    for bad_policy in ({"target_per_worker": 0}, {"target_wait_ms": float("nan")},
                       {"cooldown_s": -1}, {"cooldown_s": float("inf")}):
        with pytest.raises(ValueError):
            Policy(1, 2, **bad_policy)


def test_autoscale_command_starts_min_workers_and_refuses_a_bad_range(
    redis_server: EmbeddedRedis, r: redis.Redis
) -> None:
    import signal
    import subprocess
    import sys

    from ..conftest import consumer_names, wait_for_consumers

    base = [sys.executable, "-m", "inferis.engine"]
    bad = subprocess.run([*base, "autoscale", "--redis", redis_server.url, "--workers", "3:2"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error: EARGS"), bad.stderr
    unrouted = subprocess.run([*base, "autoscale", "--redis", redis_server.url,
                               "--workers", "1:2", "--models", "nosuch"],
                              capture_output=True, text=True, timeout=60)
    assert unrouted.returncode == 1 and "error: EARGS" in unrouted.stderr, unrouted.stderr
    clustered = subprocess.run([*base, "up", "--cluster", "2", "--workers", "1:2"],
                               capture_output=True, text=True, timeout=60)
    assert clustered.returncode == 1 and "error: EARGS" in clustered.stderr
    before = consumer_names(r)
    process = subprocess.Popen([*base, "autoscale", "--redis", redis_server.url,
                                "--workers", "1:2", "--log-level", "WARNING"],
                               stdout=subprocess.PIPE, text=True)
    try:
        wait_for_consumers(r, before, 1)
        assert "1 to 2 workers" in (process.stdout.readline() if process.stdout else "")
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and "stopped" in out
