"""``python -m benchmarks lifecycle``: latency while an alias flips between two
versions under load, against the same load with the alias still.

Two versions of the fraud model (the second a re-export of the first, so a new
file and digest), an alias ``production`` read by every request, 2 workers on
a private Redis, and one asyncio client on uvloop at a fixed number of requests
in flight. Phase 1 measures steady state; phase 2 flips the alias ``--flips``
times (each flip waits until the workers have warmed the target and Redis has
moved the alias). Reported: p50/p99 of both phases, errors, the versions that
answered, and each worker's model loads and warm-ups (from its /metrics): a
load that was not made to warm a version is one a request waited on.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import onnx
import psutil
import redis
import uvloop

from inferis.client import AsyncClient
from inferis.engine.local.embedded import EmbeddedRedis, free_port
from inferis.engine.local.supervisor import WorkerPool
from inferis.lua import ensure_library

from .loadgen import closed_loop, freeze_heap
from .scale import fraud_inputs
from .workloads import build

RESULTS = Path(__file__).resolve().parent / "results"


def second_version(blob: bytes) -> bytes:
    """The same graph with another doc string: a new file, as a retrained model is."""
    model = onnx.load_from_string(blob)
    model.doc_string = "retrained"
    return model.SerializeToString()


def scrape(port: int, names: tuple[str, ...]) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        for name in names:
            if line.startswith(name + "{") or line.startswith(name + " "):
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


async def run(concurrency: int, duration_s: float, flips: int) -> dict[str, Any]:
    (workload,) = build(["fraud"])
    inputs = fraud_inputs(workload)
    metrics_port = free_port()
    with tempfile.TemporaryDirectory(prefix="inferis-lifecycle-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis")
        server.start()
        ensure_library(redis.Redis.from_url(server.url))
        pool = WorkerPool(server.url, 2, ["--log-level", "WARNING"], metrics_base_port=metrics_port)
        pool.start()
        try:
            async with AsyncClient(server.url, timeout_ms=30_000) as client:
                v1 = (await client.modelstore("fraud", "onnx", workload.onnx)).version
                v2 = (await client.modelstore("fraud", "onnx", second_version(workload.onnx))
                      ).version
                await client.alias_set("fraud", "production", v1)
                for i in range(200):  # both workers have v1 loaded before the clock starts
                    await client.predict("fraud", inputs[i % len(inputs)], version="production")
                await asyncio.sleep(2.5)  # and have said so (their heartbeat)
                versions: dict[int, int] = {}

                async def call(i: int) -> object:
                    result = await client.run("fraud", inputs[i % len(inputs)],
                                              version="production")
                    result.raise_for_error()
                    versions[result.version] = versions.get(result.version, 0) + 1
                    return result

                freeze_heap()
                steady = await closed_loop(call, concurrency, duration_s, warmup_s=1.0)
                steady_versions, versions = versions, {}
                flip_times: list[float] = []

                async def flipper() -> None:
                    await asyncio.sleep(1.0)  # past the load's warm-up
                    gap = duration_s / max(1, flips)
                    for k in range(flips):
                        target = v2 if k % 2 == 0 else v1
                        started = time.perf_counter()
                        state, _ = await client.alias_set("fraud", "production", target,
                                                          by="benchmark")
                        while state == "pending":
                            await asyncio.sleep(0.01)
                            state, _ = await client.alias_commit("fraud", "production")
                        flip_times.append(time.perf_counter() - started)
                        await asyncio.sleep(max(0.0, gap - flip_times[-1]))

                flipping, _ = await asyncio.gather(
                    closed_loop(call, concurrency, duration_s + 0.5, warmup_s=1.0), flipper())
            per_worker = [scrape(metrics_port + i, ("inferis_model_loads_total",
                                                    "inferis_warmup_loads_total"))
                          for i in range(len(pool.processes))]
        finally:
            pool.stop()
            server.stop()
    cold = [int(w["inferis_model_loads_total"] - w["inferis_warmup_loads_total"]) - 1
            for w in per_worker]  # minus the first load of v1, before the clock
    return {
        "concurrency": concurrency, "duration_s": duration_s, "flips": len(flip_times),
        "cores": psutil.cpu_count(),
        "steady": steady.as_dict(), "flipping": flipping.as_dict(),
        "p99_ratio": round(flipping.p99_ms / steady.p99_ms, 3),
        "versions_steady": steady_versions, "versions_flipping": versions,
        "flip_seconds_median": round(sorted(flip_times)[len(flip_times) // 2], 4)
        if flip_times else None,
        "workers": per_worker, "cold_loads_seen_by_requests": cold,
    }


def main(concurrency: int, duration_s: float, flips: int, tag: str) -> int:
    doc = uvloop.run(run(concurrency, duration_s, flips))
    s, f = doc["steady"], doc["flipping"]
    print(f"fraud, alias production, {concurrency} in flight, {duration_s:.0f} s per phase")
    print("| phase | req/s | p50 ms | p99 ms | errors | versions answered |")
    print("|---|---:|---:|---:|---:|---|")
    print(f"| steady | {s['throughput_rps']:,.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
          f"{s['errors']} | {doc['versions_steady']} |")
    print(f"| {doc['flips']} flips | {f['throughput_rps']:,.0f} | {f['p50_ms']:.2f} | "
          f"{f['p99_ms']:.2f} | {f['errors']} | {doc['versions_flipping']} |")
    print(f"p99 ratio {doc['p99_ratio']:.2f}; a flip took {doc['flip_seconds_median']} s "
          f"(median, warm-up and commit); cold loads seen by requests per worker: "
          f"{doc['cold_loads_seen_by_requests']}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{tag}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(f"wrote {path}")
    return 0 if f["errors"] == 0 and not any(doc["cold_loads_seen_by_requests"]) else 1
