"""``breakdown``: where the time of one request goes at 1 in flight.

A private redis-server, one worker process and the sync client, on the fraud
workload. Both processes stamp their Redis round trips with
``time.perf_counter`` (CLOCK_MONOTONIC, comparable across processes on one
machine), so each request splits into: the client building and sending it;
the trip to the worker (Redis runs MODELRUNMANY, wakes the worker, the
worker parses the entry); the worker serving it (by phase); the trip back
(Redis runs _INFERIS_COMPLETE, wakes the client); the client decoding the
answer. The Functions' own time comes from ``INFO commandstats``, and a PING
on the same Redis gives the wake-up cost of one round trip.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from .report import RESULTS_DIR

PHASES = ("drain_notices", "admit", "prepare", "run", "settle", "record")


def _timed(marks: dict[str, list[float]], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            marks.setdefault(name, []).append(time.perf_counter() - started)

    return wrapper


def _worker(url: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """A worker whose round trips and phases are stamped (in its own process)."""
    from inferis.engine.config import WorkerConfig
    from inferis.engine.serving import executor, lanes, worker

    # When the worker wrote (its answers ride with its next read) and when a read's
    # reply reached it.
    writes: list[float] = []
    reads: list[float] = []
    phases: dict[str, list[float]] = {}
    write_read, finish_read = lanes.Lane.write_read, lanes.Lane.finish_read

    def stamped_write(self: Any, *args: Any) -> None:
        writes.append(time.perf_counter())
        write_read(self, *args)

    def stamped_read(self: Any) -> Any:
        reply = finish_read(self)
        if reply:
            reads.append(time.perf_counter())
        return reply

    lanes.Lane.write_read = stamped_write  # type: ignore[method-assign]
    lanes.Lane.finish_read = stamped_read  # type: ignore[method-assign]
    for name in ("admit", "settle", "record"):
        setattr(worker, name, _timed(phases, name, getattr(worker, name)))
    executor.Executor.prepare = _timed(phases, "prepare", executor.Executor.prepare)
    executor.Executor.run = _timed(phases, "run", executor.Executor.run)
    worker.Worker.drain_notices = _timed(phases, "drain_notices", worker.Worker.drain_notices)
    w = worker.Worker(WorkerConfig(redis_url=url))

    def stop(*_: object) -> None:
        out.put((writes, reads, phases))
        w.stop()

    signal.signal(signal.SIGUSR1, stop)
    w.run()


def _median_us(values: list[float]) -> float:
    return round(statistics.median(values) * 1e6, 1) if values else float("nan")


async def _store(url: str, workload: Any, store: Any) -> None:
    from inferis.client import AsyncClient

    async with AsyncClient(url) as client:
        await store(client, [workload], (64, 0))


def run_breakdown(requests: int, work_dir: Path) -> dict[str, Any]:
    import inferis.client.sync as sync
    from inferis.client import Client
    from inferis.engine.local.embedded import EmbeddedRedis
    from inferis.lua import ensure_library

    from .stack import request_inputs, store_workloads
    from .workloads import build

    workload = build(["fraud"])[0]
    shutil.rmtree(work_dir / "breakdown", ignore_errors=True)  # no AOF of an earlier run
    server = EmbeddedRedis(work_dir / "breakdown")
    server.start()
    conn = redis.Redis.from_url(server.url)
    ensure_library(conn)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    proc = context.Process(target=_worker, args=(server.url, queue))
    proc.start()
    trips: list[tuple[float, float, int]] = []
    plain = sync.roundtrip

    def roundtrip(c: Any, commands: Any) -> Any:
        sent = time.perf_counter()
        replies = plain(c, commands)
        trips.append((sent, time.perf_counter(), len(commands)))
        return replies

    sync.roundtrip = roundtrip
    totals: list[tuple[float, float]] = []
    try:
        asyncio.run(_store(server.url, workload, store_workloads))
        with Client(server.url) as client:
            pool = request_inputs(workload)
            for i in range(300):  # warm-up: model loaded, caches filled
                client.predict(workload.name, pool[i % len(pool)])
            trips.clear()
            conn.config_resetstat()
            for i in range(requests):
                started = time.perf_counter()
                client.predict(workload.name, pool[i % len(pool)])
                totals.append((started, time.perf_counter()))
            stats = conn.info("commandstats")
            pings = []
            for _ in range(requests):
                started = time.perf_counter()
                conn.ping()
                pings.append(time.perf_counter() - started)
    finally:
        sync.roundtrip = plain
        os.kill(proc.pid, signal.SIGUSR1)
        worker_writes, worker_reads, phases = queue.get(timeout=30)
        proc.join(10)
        server.stop()
    return _split(totals, trips, worker_writes, worker_reads, phases, stats, pings, requests)


def _split(
    totals: list[tuple[float, float]],
    client_trips: list[tuple[float, float, int]],
    worker_writes: list[float],
    worker_reads: list[float],
    phases: dict[str, list[float]],
    stats: dict[str, Any],
    pings: list[float],
    requests: int,
) -> dict[str, Any]:
    # One client round trip per predict carries the enqueue and the blocking read.
    reads = [t for t in client_trips if t[2] > 1]
    sent, returned = sorted(worker_writes), sorted(worker_reads)
    parts: dict[str, list[float]] = {k: [] for k in (
        "client: build and send", "to the worker", "worker: serve", "back to the client",
        "client: decode and return", "total",
    )}
    for (t0, t1), (c_sent, c_back, _) in zip(totals, reads, strict=False):
        i = bisect.bisect_right(returned, c_sent)  # the worker's read that got it
        if i >= len(returned):
            continue
        j = bisect.bisect_right(sent, returned[i])  # the worker's next write: its answer
        if j >= len(sent):
            continue
        parts["client: build and send"].append(c_sent - t0)
        parts["to the worker"].append(returned[i] - c_sent)
        parts["worker: serve"].append(sent[j] - returned[i])
        parts["back to the client"].append(c_back - sent[j])
        parts["client: decode and return"].append(t1 - c_back)
        parts["total"].append(t1 - t0)
    fcall = stats.get("cmdstat_fcall", {})
    return {
        "requests": requests,
        "median_us": {k: _median_us(v) for k, v in parts.items()},
        "worker_phases_median_us": {k: _median_us(phases.get(k, [])) for k in PHASES},
        "functions_us_per_call": fcall.get("usec_per_call"),
        "function_calls_per_request": round(fcall.get("calls", 0) / max(1, requests), 2),
        "ping_p50_us": _median_us(pings),
    }


def print_breakdown(doc: dict[str, Any]) -> None:
    print(f"one request at a time, {doc['requests']} requests (medians, us):")
    for name, value in doc["median_us"].items():
        print(f"  {name:<28} {value:8.1f}")
    print("  worker phases: " + ", ".join(
        f"{k} {v}" for k, v in doc["worker_phases_median_us"].items()))
    print(f"  Functions: {doc['function_calls_per_request']} FCALL per request, "
          f"{doc['functions_us_per_call']} us each inside Redis")
    print(f"  redis-py PING on the same Redis: {doc['ping_p50_us']} us")


def write(doc: dict[str, Any], tag: str = "breakdown") -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{tag}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path
