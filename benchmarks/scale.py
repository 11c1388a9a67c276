"""``python -m benchmarks scale``: throughput and CPU per request on a single Redis
and on a Redis Cluster of 1, 2 and 3 primaries, one worker beside each primary.

The fraud workload (its reference vector sent by value, so that requests spread
over every partition) at a fixed number of requests in flight, from one asyncio
client on uvloop in this process. CPU is read from /proc for each role (this
process as the client, the workers, the redis-servers) over the measured
window, and divided by the requests completed in it: the costs the written
scaling model in README.md ("Running on Redis Cluster") is built from.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis
import uvloop

from inferis.client import AsyncClient
from inferis.engine.local.cluster import LocalCluster
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.engine.local.supervisor import WorkerPool
from inferis.lua import ensure_library

from .loadgen import closed_loop, freeze_heap
from .workloads import Workload, build

RESULTS = Path(__file__).resolve().parent / "results"
WORKER_ARGS = ["--log-level", "WARNING"]


def fraud_inputs(workload: Workload) -> list[dict[str, np.ndarray]]:
    """Every request with its reference vector by value (no stored key to share a
    slot with), so the client spreads requests over all partitions."""
    assert workload.refs is not None
    pool = []
    for i, request in enumerate(workload.requests):
        inputs = dict(request)
        for name in workload.stored_inputs:
            index = workload.ref_index[i]
            inputs[name] = workload.refs[index : index + 1]
        pool.append(inputs)
    return pool


@contextmanager
def single(tmp: Path) -> Iterator[tuple[str, list[int], list[int]]]:
    server = EmbeddedRedis(tmp / "single")
    server.start()
    ensure_library(redis.Redis.from_url(server.url))
    pool = WorkerPool(server.url, 1, WORKER_ARGS)
    pool.start()
    try:
        assert server.process is not None
        yield server.url, [server.process.pid], [p.pid for p in pool.processes]
    finally:
        pool.stop()
        server.stop()


@contextmanager
def cluster(tmp: Path, primaries: int) -> Iterator[tuple[str, list[int], list[int]]]:
    local = LocalCluster(tmp / f"cluster-{primaries}", primaries, replicas=0)
    local.start()
    pools = [WorkerPool(local.url_beside(port), 1, WORKER_ARGS) for port in local.primary_ports()]
    for pool in pools:
        pool.start()
    try:
        yield (local.url, [n.process.pid for n in local.nodes if n.process is not None],
               [p.pid for pool in pools for p in pool.processes])
    finally:
        for pool in pools:
            pool.stop()
        local.stop()


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


async def measure(name: str, url: str, redis_pids: list[int], worker_pids: list[int],
                  workload: Workload, concurrency: int, duration_s: float,
                  warmup_s: float) -> dict[str, Any]:
    inputs = fraud_inputs(workload)
    async with AsyncClient(url, timeout_ms=30_000) as client:
        await client.modelstore(workload.name, "onnx", workload.onnx)
        for i in range(64):  # every worker has loaded the model before the clock starts
            await client.predict(workload.name, inputs[i])

        async def call(i: int) -> object:
            return await client.predict(workload.name, inputs[i % len(inputs)])

        freeze_heap()
        me = [psutil.Process().pid]
        marks: dict[str, float] = {}

        async def sample_at_window() -> None:  # CPU counted from where requests are
            await asyncio.sleep(warmup_s)
            marks.update(client=_cpu_s(me), workers=_cpu_s(worker_pids),
                         redis=_cpu_s(redis_pids), t=time.perf_counter())

        sampler = asyncio.create_task(sample_at_window())
        stats = await closed_loop(call, concurrency, duration_s, warmup_s=warmup_s)
        await sampler
        elapsed = time.perf_counter() - marks["t"]
        used = {"client": _cpu_s(me) - marks["client"],
                "workers": _cpu_s(worker_pids) - marks["workers"],
                "redis": _cpu_s(redis_pids) - marks["redis"]}
    # the window ends at duration_s after warm-up; the drain after it adds a little CPU
    # and no requests: scale CPU to the window.
    scale = duration_s / elapsed if elapsed > 0 else 1.0
    done = max(stats.completed, 1)
    per_request = {role: round(cpu * scale / done * 1e6, 1) for role, cpu in used.items()}
    return {
        "setup": name, "concurrency": concurrency, "completed": stats.completed,
        "errors": stats.errors, "throughput_rps": round(stats.throughput_rps),
        "p50_ms": round(stats.p50_ms, 2), "p99_ms": round(stats.p99_ms, 2),
        "cpu_us_per_request": per_request,
        "cpu_us_per_request_total": round(sum(per_request.values()), 1),
        "cores_busy": round(sum(used.values()) * scale / duration_s, 2),
    }


SETUPS: list[tuple[str, Callable[[Path], Any]]] = [
    ("single Redis, 1 worker", single),
    ("cluster 1 primary, 1 worker", lambda tmp: cluster(tmp, 1)),
    ("cluster 2 primaries, 1 worker each", lambda tmp: cluster(tmp, 2)),
    ("cluster 3 primaries, 1 worker each", lambda tmp: cluster(tmp, 3)),
]


async def run_scale(concurrency: int, duration_s: float, warmup_s: float) -> list[dict[str, Any]]:
    (workload,) = build(["fraud"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="inferis-scale-") as tmp:
        for name, setup in SETUPS:
            with setup(Path(tmp)) as (url, redis_pids, worker_pids):
                row = await measure(name, url, redis_pids, worker_pids, workload,
                                    concurrency, duration_s, warmup_s)
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    cpu = row["cpu_us_per_request"]
    return (f"| {row['setup']} | {row['throughput_rps']:,} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.1f} | {cpu['client']:.1f} | {cpu['workers']:.1f} | "
            f"{cpu['redis']:.1f} | {row['cpu_us_per_request_total']:.1f} | "
            f"{row['cores_busy']:.2f} | {row['errors']} |")


def main(concurrency: int, duration_s: float, warmup_s: float, tag: str) -> int:
    print(f"fraud workload, {concurrency} in flight, {duration_s:.0f} s per setup")
    print("| setup | req/s | p50 ms | p99 ms | CPU µs/req client | workers | redis | total "
          "| cores busy | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = uvloop.run(run_scale(concurrency, duration_s, warmup_s))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{tag}.json"
    path.write_text(json.dumps({"concurrency": concurrency, "duration_s": duration_s,
                                "cores": psutil.cpu_count(), "rows": rows}, indent=2))
    print(f"wrote {path}")
    return 0 if all(r["errors"] == 0 for r in rows) else 1
