"""``python -m benchmarks fairness``: one caller's p99 alone, under another caller's
flood, under the flood with a per-caller queue bound, and under a flood of a slow
model's requests.

Caller "calm" keeps a few requests in flight from this process; caller "flood"
keeps many in flight from a process of its own (so the two load generators do
not share an event loop). 2 workers on a private Redis; calm runs the fraud
model, the flood runs it too or a slow model (a chain of matrix products, a few
milliseconds a run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import redis
import uvloop

from inferis.client import AsyncClient, BusyError
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.engine.local.supervisor import WorkerPool
from inferis.lua import ensure_library
from tests.models import slow_model

from .loadgen import closed_loop, freeze_heap
from .scale import fraud_inputs
from .workloads import build

RESULTS = Path(__file__).resolve().parent / "results"
SLOW_STEPS, SLOW_SIZE = 400, 128  # about 7 ms a run on one core

# The flooding caller: as many requests in flight as it is given, until killed;
# requests refused with EBUSY are counted and retried after a millisecond.
FLOOD = """
import asyncio, sys, uvloop
import numpy as np
from inferis.client import AsyncClient, BusyError
from benchmarks.scale import fraud_inputs
from benchmarks.workloads import build
(workload,) = build(["fraud"])
model = sys.argv[3]
inputs = fraud_inputs(workload) if model == "fraud" else [{"X": np.ones(SLOW_SHAPE, np.float32)}]
async def main(url, concurrency):
    async with AsyncClient(url, caller="flood", timeout_ms=120_000) as client:
        async def one(k):
            i = k
            while True:
                try:
                    await client.predict(model, inputs[i % len(inputs)])
                except BusyError:
                    await asyncio.sleep(0.001)
                i += concurrency
        await asyncio.gather(*(one(k) for k in range(concurrency)))
uvloop.run(main(sys.argv[1], int(sys.argv[2])))
""".replace("SLOW_SHAPE", repr((SLOW_SIZE, SLOW_SIZE)))


async def measure(url: str, concurrency: int, duration_s: float) -> dict[str, Any]:
    (workload,) = build(["fraud"])
    inputs = fraud_inputs(workload)
    refused = 0
    async with AsyncClient(url, caller="calm", timeout_ms=60_000) as client:
        async def call(i: int) -> object:
            nonlocal refused
            try:
                return await client.predict("fraud", inputs[i % len(inputs)])
            except BusyError:
                refused += 1
                raise

        freeze_heap()
        stats = await closed_loop(call, concurrency, duration_s, warmup_s=1.0)
    return {**stats.as_dict(), "refused": refused}


# (phase, per-caller bound, the flood's model, worker flags); the last is the
# control: the same slow flood with workers that run requests in stream order.
def _phases(bound: int) -> list[tuple[str, int, str, tuple[str, ...]]]:
    return [
        ("flood, no per-caller bound", 0, "fraud", ()),
        (f"flood, per-caller bound {bound}", bound, "fraud", ()),
        ("slow-model flood", 0, "slow", ()),
        ("slow-model flood, stream order (--read-ahead 1)", 0, "slow", ("--read-ahead", "1")),
    ]


def run(concurrency: int, flood: int, bound: int, duration_s: float) -> dict[str, Any]:
    (workload,) = build(["fraud"])
    with tempfile.TemporaryDirectory(prefix="inferis-fairness-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis")
        server.start()
        conn = redis.Redis.from_url(server.url)
        ensure_library(conn)
        flags: tuple[str, ...] = ()
        pool = WorkerPool(server.url, 2, ["--log-level", "WARNING"])
        pool.start()
        phases: dict[str, Any] = {}
        try:
            async def store() -> None:
                async with AsyncClient(server.url) as client:
                    await client.modelstore("fraud", "onnx", workload.onnx)
                    await client.modelstore("slow", "onnx", slow_model(SLOW_STEPS, SLOW_SIZE))
                    await client.predict("fraud", fraud_inputs(workload)[0])

            uvloop.run(store())
            phases["alone"] = uvloop.run(measure(server.url, concurrency, duration_s))
            for name, per_caller, model, worker_flags in _phases(bound):
                if worker_flags != flags:
                    pool.stop()
                    flags = worker_flags
                    pool = WorkerPool(server.url, 2, ["--log-level", "WARNING", *flags])
                    pool.start()
                conn.hset("{inferis:0}:limits", mapping={"max_queue_per_caller": per_caller})
                flooder = subprocess.Popen(
                    [sys.executable, "-c", FLOOD, server.url, str(flood), model],
                    cwd=Path(__file__).resolve().parent.parent,
                )
                time.sleep(2.0)  # the flood is on
                try:
                    phases[name] = uvloop.run(measure(server.url, concurrency, duration_s))
                    phases[name]["queued_at_end"] = int(conn.hget("{inferis:0}:config",
                                                                  "queued") or 0)
                finally:
                    flooder.kill()
                    flooder.wait()
                drained_by = time.monotonic() + 120
                while int(conn.hget("{inferis:0}:config", "queued") or 0):
                    if time.monotonic() > drained_by:
                        raise RuntimeError("the flood's queue did not drain in 120 s")
                    time.sleep(0.2)  # the flood's queue drains
        finally:
            pool.stop()
            server.stop()
    alone = phases["alone"]["p99_ms"]
    for phase in phases.values():
        phase["p99_vs_alone"] = round(phase["p99_ms"] / alone, 2)
    return {"concurrency": concurrency, "flood_in_flight": flood, "bound": bound,
            "cores": psutil.cpu_count(), "phases": phases}


def main(concurrency: int, flood: int, bound: int, duration_s: float, tag: str) -> int:
    doc = run(concurrency, flood, bound, duration_s)
    print(f"caller 'calm' at {concurrency} in flight; caller 'flood' at {flood} in flight")
    print("| phase | calm req/s | calm p50 ms | calm p99 ms | p99 vs alone | flood queued |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, p in doc["phases"].items():
        print(f"| {name} | {p['throughput_rps']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | "
              f"{p['p99_vs_alone']:.2f}x | {p.get('queued_at_end', '-')} |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{tag}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(f"wrote {path}")
    return 0
