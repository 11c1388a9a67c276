"""Faults injected while a few hundred requests are in flight; every request is
accounted for afterwards (slow tests, bounded in count and time)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import pytest
import redis

from inferis.client import AsyncClient
from inferis.engine.embedded import EmbeddedRedis
from inferis.engine.library import ensure_library
from inferis.engine.supervisor import WorkerPool

from .harness import Tally, drive

pytestmark = pytest.mark.slow


def _iris_case(iris):  # type: ignore[no-untyped-def]
    expected = iris.forest.predict(iris.features)

    def case(i: int):  # type: ignore[no-untyped-def]
        row = i % len(iris.features)
        return {"X": iris.features[row : row + 1]}, expected[row : row + 1]

    return case


async def _under_faults(client: AsyncClient, iris, inject, faults: int, every_s: float) -> Tally:  # type: ignore[no-untyped-def]
    """Keep load on while ``faults`` faults are injected, then drain and account."""
    stop = asyncio.Event()
    load = asyncio.create_task(
        drive(client, "iris", _iris_case(iris), total=200_000, concurrency=200, stop=stop)
    )
    for _ in range(faults):
        await asyncio.sleep(every_s)
        await inject()
    await asyncio.sleep(every_s)
    stop.set()
    return await load


async def test_workers_killed_and_stopped_under_load(tmp_path: Path, iris) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendfsync="always")
    server.start()
    ensure_library(redis.Redis(port=server.port))
    pool = WorkerPool(server.url, 3, ["--log-level", "ERROR", "--claim-idle-ms", "1500"])
    pool.start()
    rng = random.Random(11)
    faults = {"kill": 0, "stop": 0}

    async def inject() -> None:
        pool.watch()  # restart what was killed last time
        victim = rng.choice(pool.processes)
        if rng.random() < 0.5:
            victim.send_signal(signal.SIGKILL)
            faults["kill"] += 1
        else:  # frozen longer than the reclaim idle time, then back
            victim.send_signal(signal.SIGSTOP)
            await asyncio.sleep(2.5)
            victim.send_signal(signal.SIGCONT)
            faults["stop"] += 1

    try:
        async with AsyncClient(server.url, timeout_ms=90_000) as client:
            await client.modelstore("iris", "onnx", iris.blob)
            tally = await _under_faults(client, iris, inject, faults=6, every_s=0.8)
        print(faults, tally.summary())
        assert faults["kill"] >= 1 and faults["stop"] >= 1
        assert tally.sent > 1000 and tally.lost == 0 and tally.wrong == 0
        assert tally.correct == tally.sent  # a worker's death is invisible to callers
    finally:
        pool.stop()
        server.stop()


@pytest.mark.parametrize("fsync", ["always", "everysec"])
async def test_redis_killed_under_load(tmp_path: Path, iris, fsync: str) -> None:
    data = tmp_path / "redis"
    server = EmbeddedRedis(data, appendfsync=fsync)
    server.start()
    ensure_library(redis.Redis(port=server.port))
    pool = WorkerPool(server.url, 2, ["--log-level", "ERROR", "--claim-idle-ms", "1500"])
    pool.start()
    crashes = 0

    async def inject() -> None:
        nonlocal server, crashes
        server.kill()  # SIGKILL: only what the AOF holds comes back
        crashes += 1
        await asyncio.sleep(0.3)
        server = EmbeddedRedis(data, port=server.port, appendfsync=fsync)
        await asyncio.to_thread(server.start)

    try:
        async with AsyncClient(server.url, timeout_ms=20_000) as client:
            await client.modelstore("iris", "onnx", iris.blob)
            tally = await _under_faults(client, iris, inject, faults=3, every_s=1.5)
        print(f"appendfsync {fsync}: {crashes} crashes;", tally.summary())
        assert crashes == 3 and tally.sent > 500
        assert tally.wrong == 0 and tally.answered + tally.lost == tally.sent
        assert not (set(tally.errors) - {"ConnectionError", "TimeoutError"})
        if fsync == "always":
            assert tally.lost == 0  # an acknowledged enqueue is on disk
        assert all(p.poll() is None for p in pool.processes)
    finally:
        pool.stop()
        server.stop()
        os.sync()
