"""Fault scenarios under load, shared by the chaos tests (short) and
``python -m benchmarks chaos`` (longer). Each returns what it measured; the
callers decide what to assert or print."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from inferis.client import AsyncClient
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.engine.local.supervisor import WorkerPool
from inferis.lua import ensure_library

from .harness import Tally, drive
from .models import IrisModel
from .topology import ClusterStack, Sentinels, replica_of, wait_for_link


@dataclass
class Result:
    name: str
    tally: Tally
    faults: dict[str, int]
    windows: list[tuple[float, float]] = field(default_factory=list)
    workers_alive: bool = True

    def row(self) -> dict[str, Any]:
        during, outside = self.tally.p99_split_ms(self.windows)
        t = self.tally
        return {
            "scenario": self.name, "faults": dict(self.faults), "sent": t.sent,
            "correct": t.correct, "errors": dict(t.errors), "lost": t.lost,
            "wrong": t.wrong, "duplicates": t.duplicates,
            "p99_during_faults_ms": round(during, 1), "p99_outside_faults_ms": round(outside, 1),
            "max_during_faults_ms": round(t.max_during_ms(self.windows), 1),
        }


def _iris_case(iris: IrisModel):  # type: ignore[no-untyped-def]
    expected = iris.forest.predict(iris.features)  # type: ignore[attr-defined]

    def case(i: int):  # type: ignore[no-untyped-def]
        row = i % len(iris.features)
        return {"X": iris.features[row : row + 1]}, expected[row : row + 1]

    return case


async def _under_faults(client: AsyncClient, iris: IrisModel, inject, faults: int,  # type: ignore[no-untyped-def]
                        every_s: float, concurrency: int) -> Tally:
    """Keep load on while ``faults`` faults are injected, then drain and account."""
    stop = asyncio.Event()
    load = asyncio.create_task(
        drive(client, "iris", _iris_case(iris), total=10_000_000, concurrency=concurrency,
              stop=stop)
    )
    for _ in range(faults):
        await asyncio.sleep(every_s)
        await inject()
    await asyncio.sleep(every_s)
    stop.set()
    return await load


async def worker_faults(tmp: Path, iris: IrisModel, faults: int, every_s: float = 0.8,
                        workers: int = 3, concurrency: int = 200, seed: int = 11) -> Result:
    """Workers are SIGKILLed (and restarted) or SIGSTOPped past the reclaim idle time."""
    server = EmbeddedRedis(tmp / "redis", appendfsync="always")
    server.start()
    ensure_library(redis.Redis(port=server.port))
    pool = WorkerPool(server.url, workers, ["--log-level", "ERROR", "--claim-idle-ms", "1500"])
    pool.start()
    rng = random.Random(seed)
    result = Result("worker SIGKILL / SIGSTOP", Tally(), {"kill": 0, "stop": 0})

    async def inject() -> None:
        pool.watch()  # restart what was killed last time
        victim = rng.choice(pool.processes)
        started = time.monotonic()
        if rng.random() < 0.5:
            victim.send_signal(signal.SIGKILL)
            result.faults["kill"] += 1
        else:  # frozen longer than the reclaim idle time, then back
            victim.send_signal(signal.SIGSTOP)
            await asyncio.sleep(2.5)
            victim.send_signal(signal.SIGCONT)
            result.faults["stop"] += 1
        result.windows.append((started, time.monotonic()))

    try:
        async with AsyncClient(server.url, timeout_ms=90_000) as client:
            await client.modelstore("iris", "onnx", iris.blob)
            result.tally = await _under_faults(client, iris, inject, faults, every_s, concurrency)
    finally:
        pool.stop()
        server.stop()
    return result


async def redis_crashes(tmp: Path, iris: IrisModel, fsync: str, crashes: int,
                        every_s: float = 1.5, concurrency: int = 100) -> Result:
    """redis-server is SIGKILLed and restarted from its AOF, under load."""
    data = tmp / f"redis-{fsync}"
    server = EmbeddedRedis(data, appendfsync=fsync)
    server.start()
    ensure_library(redis.Redis(port=server.port))
    pool = WorkerPool(server.url, 2, ["--log-level", "ERROR", "--claim-idle-ms", "1500"])
    pool.start()
    result = Result(f"redis SIGKILL, appendfsync {fsync}", Tally(), {"crash": 0})

    async def inject() -> None:
        nonlocal server
        started = time.monotonic()
        server.kill()  # only what the AOF holds comes back
        result.faults["crash"] += 1
        await asyncio.sleep(0.3)
        server = EmbeddedRedis(data, port=server.port, appendfsync=fsync)
        await asyncio.to_thread(server.start)
        result.windows.append((started, time.monotonic()))

    try:
        async with AsyncClient(server.url, timeout_ms=20_000) as client:
            await client.modelstore("iris", "onnx", iris.blob)
            result.tally = await _under_faults(client, iris, inject, crashes, every_s, concurrency)
        result.workers_alive = all(p.poll() is None for p in pool.processes)
    finally:
        pool.stop()
        server.stop()
    return result


async def sentinel_failover(tmp: Path, iris: IrisModel, total: int = 1500,
                            concurrency: int = 32) -> Result:
    """Primary + replica + 3 Sentinels; the primary is SIGKILLed under load.

    The client enqueues with WAIT 1; the old primary comes back and Sentinel
    makes it a replica of the promoted one."""
    primary = EmbeddedRedis(tmp / "primary", appendfsync="always")
    primary.start()
    replica = replica_of(primary, tmp / "replica")
    replica.start()
    wait_for_link(replica)
    ensure_library(redis.Redis(port=primary.port))
    sentinels = Sentinels(tmp / "sentinels", primary.port)
    sentinels.start()
    pool = WorkerPool(sentinels.url, 2, ["--log-level", "ERROR", "--claim-idle-ms", "2000"])
    pool.start()
    result = Result("Sentinel failover, WAIT 1", Tally(), {"failover": 0})
    try:
        async with AsyncClient(sentinels.url, wait_replicas=1, timeout_ms=60_000) as client:
            await client.modelstore("iris", "onnx", iris.blob)
            load = asyncio.create_task(
                drive(client, "iris", _iris_case(iris), total=total, concurrency=concurrency)
            )
            await asyncio.sleep(1.0)
            started = time.monotonic()
            old = primary.port
            primary.kill()
            await asyncio.to_thread(sentinels.wait_for_failover, old)
            result.faults["failover"] += 1
            primary = EmbeddedRedis(tmp / "primary", port=old, appendfsync="always")
            primary.start()
            result.windows.append((started, time.monotonic()))
            result.tally = await load
        result.workers_alive = all(p.poll() is None for p in pool.processes)
    finally:
        pool.stop()
        sentinels.stop()
        primary.stop()
        replica.stop()
    return result




# ---------------------------------------------------------------- Redis Cluster


async def _cluster_run(stack: ClusterStack, iris: IrisModel, result: Result, inject,  # type: ignore[no-untyped-def]
                       concurrency: int, wait_replicas: int = 0, after_s: float = 3.0) -> Result:
    """Load on a started cluster from a second before ``inject`` runs until
    ``after_s`` after it returns, then account for every request; the stack is
    stopped whatever happens."""
    try:
        async with AsyncClient(stack.url, wait_replicas=wait_replicas,
                               timeout_ms=90_000) as client:
            await client.modelstore("iris", "onnx", iris.blob)
            stop = asyncio.Event()
            load = asyncio.create_task(
                drive(client, "iris", _iris_case(iris), total=10_000_000,
                      concurrency=concurrency, stop=stop)
            )
            await asyncio.sleep(1.0)
            started = time.monotonic()
            await inject()
            result.windows.append((started, time.monotonic()))
            await asyncio.sleep(after_s)
            stop.set()
            result.tally = await load
        result.workers_alive = stack.workers_alive()
    finally:
        await asyncio.to_thread(stack.stop)
    return result


async def cluster_failover(tmp: Path, iris: IrisModel, concurrency: int = 32) -> Result:
    """3 primaries + 3 replicas; one primary is SIGKILLed under load, the cluster
    promotes its replica, and the old primary comes back as a replica. The client
    enqueues with WAIT 1."""
    stack = ClusterStack(tmp, worker_args=("--claim-idle-ms", "2000"))
    await asyncio.to_thread(stack.start)
    result = Result("Cluster primary SIGKILL, WAIT 1", Tally(), {"failover": 0})
    cluster = stack.cluster

    async def inject() -> None:
        victim = cluster.primary_ports()[0]
        cluster.kill(victim)
        await asyncio.to_thread(cluster.wait_ok, 60)  # the replica took over
        result.faults["failover"] += 1
        await asyncio.to_thread(cluster.restart, victim)

    return await _cluster_run(stack, iris, result, inject, concurrency, wait_replicas=1)


async def cluster_reshard(tmp: Path, iris: IrisModel, slots: int = 1500,
                          concurrency: int = 32) -> Result:
    """Slots (and the partitions in them) migrated between primaries with
    ``redis-cli --cluster reshard`` while serving: A to B, then B to C."""
    stack = ClusterStack(tmp, worker_args=("--claim-idle-ms", "2000"))
    await asyncio.to_thread(stack.start)
    result = Result(f"Cluster reshard, {slots} slots twice", Tally(), {"reshard": 0})
    cluster = stack.cluster

    async def inject() -> None:
        a, b, c = cluster.primary_ports()
        for source, target in ((a, b), (b, c)):
            await asyncio.to_thread(cluster.reshard, source, target, slots)
            result.faults["reshard"] += 1

    return await _cluster_run(stack, iris, result, inject, concurrency)


async def cluster_grow_shrink(tmp: Path, iris: IrisModel, slots: int = 1500,
                              concurrency: int = 32) -> Result:
    """A primary added (with a worker beside it) and given slots, a replica removed,
    then the new primary's slots handed back and the node removed, all under load."""
    stack = ClusterStack(tmp, worker_args=("--claim-idle-ms", "2000"))
    await asyncio.to_thread(stack.start)
    result = Result("Cluster node added and removed", Tally(), {"added": 0, "removed": 0})
    cluster = stack.cluster

    async def inject() -> None:
        a, b, _ = cluster.primary_ports()
        node = await asyncio.to_thread(cluster.add_node)
        stack.workers_beside(node.port)
        await asyncio.to_thread(cluster.reshard, a, node.port, slots)
        result.faults["added"] += 1
        replica = cluster.replica_ports(b)[0]
        await asyncio.to_thread(cluster.remove_node, replica)
        result.faults["removed"] += 1
        await asyncio.to_thread(cluster.reshard, node.port, a, cluster.slots_of(node.port))
        await asyncio.to_thread(cluster.remove_node, node.port)
        result.faults["removed"] += 1

    return await _cluster_run(stack, iris, result, inject, concurrency)
