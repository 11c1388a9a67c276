"""Sentinel failover under load: nothing acknowledged with WAIT 1 is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from inferis.client import AsyncClient
from inferis.engine.embedded import EmbeddedRedis
from inferis.engine.library import ensure_library
from inferis.engine.supervisor import WorkerPool

from .harness import drive
from .topology import Sentinels, replica_of, wait_for_link

pytestmark = pytest.mark.slow


async def test_primary_killed_under_load_loses_nothing(tmp_path: Path, iris) -> None:
    primary = EmbeddedRedis(tmp_path / "primary", appendfsync="always")
    primary.start()
    replica = replica_of(primary, tmp_path / "replica")
    replica.start()
    wait_for_link(replica)
    ensure_library(redis.Redis(port=primary.port))
    sentinels = Sentinels(tmp_path / "sentinels", primary.port)
    sentinels.start()
    pool = WorkerPool(sentinels.url, 2, ["--log-level", "WARNING", "--claim-idle-ms", "2000"])
    pool.start()
    expected = iris.forest.predict(iris.features)
    try:
        async with AsyncClient(sentinels.url, wait_replicas=1, timeout_ms=60_000) as client:
            await client.modelstore("iris", "onnx", iris.blob)

            def case(i: int):  # type: ignore[no-untyped-def]
                row = i % len(iris.features)
                return {"X": iris.features[row : row + 1]}, expected[row : row + 1]

            load = asyncio.create_task(drive(client, "iris", case, total=1500, concurrency=32))
            await asyncio.sleep(1.0)
            old = primary.port
            primary.kill()  # SIGKILL the primary mid-load
            new = await asyncio.to_thread(sentinels.wait_for_failover, old)
            assert new == replica.port
            # the old primary returns and Sentinel makes it a replica: WAIT 1 works again
            primary = EmbeddedRedis(tmp_path / "primary", port=old, appendfsync="always")
            primary.start()
            tally = await load
        print(tally.summary())
        assert tally.lost == 0
        assert tally.wrong == 0
        assert tally.correct > 0 and tally.answered == tally.sent == 1500
        # every refusal was reported to its caller: not enough replicas during the gap,
        # or Redis unreachable past the client's retry window
        assert set(tally.errors) <= {"EREPLICA", "ConnectionError", "TimeoutError"}
        assert all(p.poll() is None for p in pool.processes)  # workers followed the promotion
    finally:
        pool.stop()
        sentinels.stop()
        primary.stop()
        replica.stop()
