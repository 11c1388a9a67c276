"""``python -m benchmarks cache``: the prediction cache on repeated and on fresh inputs.

One workload's model stored twice, without and with a cache (``cache_ttl_ms``),
on a private Redis with its workers, driven by one asyncio client on uvloop at a
fixed number of requests in flight. Two input streams: Zipf-mixed repeats over
``--distinct`` inputs (a few are asked very often, most rarely, as real traffic
repeats itself), and inputs that never repeat (every request a miss: what the
cache costs when it never helps). Reported per stream, cache off and on:
throughput, p50 and p99, the share of answers that came from the cache, the CPU
per request of the workers, Redis and the client (this process), and the miss
cost (fresh inputs, on against off). On a small machine the client and Redis
share the cores with the workers, so a hit's saving shows in the workers' CPU
before it shows in throughput.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis
import uvloop

from inferis.client import AsyncClient
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.engine.local.supervisor import WorkerPool
from inferis.lua import ensure_library

from .loadgen import closed_loop, freeze_heap
from .workloads import Workload, build

RESULTS = Path(__file__).resolve().parent / "results"
ZIPF_S = 1.1  # the exponent: rank k is asked in proportion to 1 / k**s
SEQUENCE = 1 << 18  # Zipf draws made ahead, cycled


def distinct_inputs(workload: Workload, count: int) -> list[dict[str, np.ndarray]]:
    """``count`` different requests: the workload's pool, each copy nudged apart."""
    out = []
    for i in range(count):
        base = workload.requests[i % len(workload.requests)]
        inputs = {name: array.copy() for name, array in base.items()}
        first = workload.input_names[0]
        inputs[first].flat[0] += np.float32(i * 1e-3)
        out.append(inputs)
    return out


def zipf_order(count: int, seed: int = 11) -> np.ndarray:
    ranks = np.arange(1, count + 1, dtype=np.float64)
    p = ranks ** -ZIPF_S
    return np.random.default_rng(seed).choice(count, size=SEQUENCE, p=p / p.sum())


async def run(workload_name: str, concurrency: int, duration_s: float, warmup_s: float,
              distinct: int, workers: int) -> dict[str, Any]:
    (workload,) = build([workload_name])
    pool_inputs = distinct_inputs(workload, distinct)
    order = zipf_order(distinct)
    first = workload.input_names[0]
    fresh_base = [dict(r) for r in workload.requests]
    with tempfile.TemporaryDirectory(prefix="inferis-cache-bench-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis")
        server.start()
        ensure_library(redis.Redis.from_url(server.url))
        pool = WorkerPool(server.url, workers, ["--log-level", "WARNING"])
        pool.start()
        rows: list[dict[str, Any]] = []
        try:
            async with AsyncClient(server.url, timeout_ms=30_000) as client:
                await client.modelstore("plain", "onnx", workload.onnx)
                await client.modelstore("cached", "onnx", workload.onnx,
                                        cache_ttl_ms=3_600_000, cache_max_entries=100_000)
                for model in ("plain", "cached"):  # loaded, and a hit equals a fresh run
                    await client.predict(model, pool_inputs[0])
                hit = await client.run("cached", pool_inputs[0])
                fresh = await client.run("plain", pool_inputs[0])
                assert hit.cached and all(np.array_equal(hit.outputs[n], fresh.outputs[n])
                                          for n in workload.output_names)
                roles = {"workers": [psutil.Process(p.pid) for p in pool.processes],
                         "redis": [psutil.Process(server.process.pid)],  # type: ignore[union-attr]
                         "client": [psutil.Process()]}
                freeze_heap()
                for stream in ("zipf", "fresh"):
                    for model in ("plain", "cached"):
                        counts = {"hits": 0, "answers": 0}
                        run_id = len(rows) + 1  # fresh inputs meet none of another row's

                        def inputs_for(i: int, stream: str = stream, run_id: int = run_id
                                       ) -> dict[str, np.ndarray]:
                            if stream == "zipf":
                                return pool_inputs[order[i % SEQUENCE]]
                            inputs = dict(fresh_base[i % len(fresh_base)])
                            x = inputs[first] = inputs[first].copy()
                            # small integers: exact in float32, so no two requests agree
                            x.flat[0], x.flat[1] = i % 4096, run_id * 100_000 + i // 4096
                            return inputs

                        async def call(i: int, model: str = model, counts: dict = counts,
                                       inputs_for: Any = inputs_for) -> None:
                            result = await client.run(model, inputs_for(i))
                            result.raise_for_error()
                            counts["answers"] += 1
                            counts["hits"] += result.cached

                        before = _cpu(roles)
                        point = await closed_loop(call, concurrency, duration_s,
                                                  warmup_s=warmup_s)
                        used = _cpu(roles)
                        per_request = {role: round((used[role] - before[role]) * 1e6
                                                   / max(1, counts["answers"]), 1)
                                       for role in used}
                        rows.append({
                            "inputs": stream, "cache": model == "cached", **point.as_dict(),
                            "hit_rate": counts["hits"] / max(1, counts["answers"]),
                            "cpu_us_per_request": per_request,
                        })
        finally:
            pool.stop()
            server.stop()
    by = {(r["inputs"], r["cache"]): r for r in rows}
    off, on = by["fresh", False], by["fresh", True]
    return {
        "workload": workload.name, "description": workload.description,
        "concurrency": concurrency, "duration_s": duration_s, "warmup_s": warmup_s,
        "distinct_inputs": distinct, "zipf_s": ZIPF_S, "workers": workers,
        "cores": psutil.cpu_count(), "rows": rows,
        "miss_cost": {
            "p50_ms": round(on["p50_ms"] - off["p50_ms"], 4),
            "throughput_ratio": round(on["throughput_rps"] / off["throughput_rps"], 3),
        },
        "zipf_speedup": round(by["zipf", True]["throughput_rps"]
                              / by["zipf", False]["throughput_rps"], 3),
    }


def _cpu(roles: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each role's processes."""
    return {role: sum(sum(p.cpu_times()[:2]) for p in procs) for role, procs in roles.items()}


def main(workload: str, concurrency: int, duration_s: float, warmup_s: float, distinct: int,
         workers: int, tag: str) -> int:
    doc = uvloop.run(run(workload, concurrency, duration_s, warmup_s, distinct, workers))
    print(f"{doc['description']}; {concurrency} in flight, {workers} worker(s), "
          f"{duration_s:g} s per row; Zipf s={ZIPF_S} over {distinct} distinct inputs")
    print("| inputs | cache | req/s | p50 ms | p99 ms | answered from the cache "
          "| CPU µs per request: workers | redis | client |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in doc["rows"]:
        cpu = r["cpu_us_per_request"]
        print(f"| {r['inputs']} | {'on' if r['cache'] else 'off'} | {r['throughput_rps']:,.0f} "
              f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['hit_rate']:.1%} "
              f"| {cpu['workers']:.0f} | {cpu['redis']:.0f} | {cpu['client']:.0f} |")
    cost = doc["miss_cost"]
    print(f"Zipf: {doc['zipf_speedup']:.2f}x the throughput with the cache; miss cost on fresh "
          f"inputs: p50 {cost['p50_ms']:+.3f} ms, throughput x{cost['throughput_ratio']:.2f}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{tag}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(f"wrote {path}")
    errors = sum(r["errors"] for r in doc["rows"])
    return 0 if errors == 0 else 1
