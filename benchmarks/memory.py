"""``memory``: worker RSS and Redis memory sampled every second under steady load.

All three workloads are loaded; ``concurrency`` callers cycle through them for
``seconds``. After the warm-up, memory should be flat: request streams, reply
streams and transient tensors must not pile up. "Flat" compares the mean of the
last third of the post-warm-up samples with the mean of the first third (at most
20 % more, plus a small absolute allowance): memory that expires in waves swings
up and down, and only a level that keeps rising fails. The least-squares slope
is reported beside it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import redis

from inferis.client import AsyncClient
from inferis.client.protocol import keys as K

from . import machine
from .loadgen import freeze_heap
from .report import RESULTS_DIR
from .stack import InferisStack, request_inputs, store_workloads
from .workloads import WORKLOADS, build

# Growth allowed after the warm-up before a series counts as "not flat"; stream
# lengths may move by up to the number of requests in flight (set per run).
_ALLOWANCE = {"worker_rss_mib": 16.0, "redis_used_memory_mib": 4.0, "redis_rss_mib": 8.0,
              "redis_keys": 1000.0}
_STREAMS = ("request_stream_len", "reply_stream_entries")
_RID = re.compile(r":r:[^:]+:")


def _sample(stack: InferisStack, conn: redis.Redis, t0: float, done: int) -> dict[str, float]:
    info = conn.info("memory")
    replies = 0
    for stream in conn.scan_iter(match=f"{K.partition_tag(0)}:replies:*", count=1000):
        replies += int(conn.xlen(stream))
    return {
        "t_s": round(time.perf_counter() - t0, 2),
        "worker_rss_mib": sum(p.memory_info().rss for p in stack.worker_processes()) / 2**20,
        "redis_used_memory_mib": int(info["used_memory"]) / 2**20,
        "redis_rss_mib": int(info["used_memory_rss"]) / 2**20,
        "redis_keys": float(conn.dbsize()),
        "request_stream_len": float(conn.xlen(K.request_stream(0))),
        "reply_stream_entries": float(replies),
        "completed": float(done),
    }


def key_kinds(conn: redis.Redis, limit: int = 20000) -> dict[str, int]:
    """What the keys are, by name pattern (request ids folded), from a bounded SCAN."""
    kinds: Counter[str] = Counter()
    for n, key in enumerate(conn.scan_iter(count=1000)):
        if n >= limit:
            break
        name = key.decode(errors="replace")
        name = re.sub(r":ref:\d+$", ":ref:<i>", _RID.sub(":r:<rid>:", name))
        kinds[name] += 1
    return dict(kinds.most_common(12))


def assess(samples: list[dict[str, float]], warmup_s: float, metric: str,
           allowance: float) -> dict[str, Any]:
    values = np.array([s[metric] for s in samples])
    times = np.array([s["t_s"] for s in samples])
    after = times >= warmup_s
    result: dict[str, Any] = {
        "start": round(float(values[0]), 2),
        "after_warmup": round(float(values[after][0]), 2) if after.any() else None,
        "end": round(float(values[-1]), 2),
        "max": round(float(values.max()), 2),
    }
    if after.sum() >= 3:
        slope = float(np.polyfit(times[after], values[after], 1)[0])
        third = max(1, int(after.sum()) // 3)
        early = float(values[after][:third].mean())
        late = float(values[after][-third:].mean())
        result.update(
            slope_per_min=round(slope * 60, 3),
            first_third_mean=round(early, 2),
            last_third_mean=round(late, 2),
            flat=bool(late <= early * 1.2 + allowance),
        )
    return result


async def run_memory(
    *, seconds: float, concurrency: int, workers: int, batch: tuple[int, int],
    warmup_s: float, work_dir: Path, ttl_ms: int | None, max_redis_mib: float,
) -> dict[str, Any]:
    workloads = build(list(WORKLOADS))
    freeze_heap()
    stack = InferisStack(work_dir / "memory", workers)
    url = await asyncio.to_thread(stack.start)
    client = AsyncClient(url, **({"ttl_ms": ttl_ms} if ttl_ms else {}))
    conn = redis.Redis.from_url(url)
    samples: list[dict[str, float]] = []
    errors = 0
    done = 0
    stopped_early = ""
    kinds: dict[str, int] = {}
    try:
        await store_workloads(client, workloads, batch)
        pools = [(w.name, request_inputs(w)) for w in workloads]
        for name, pool in pools:  # every model loaded on every worker before t=0
            await asyncio.gather(*(client.predict(name, pool[i]) for i in range(8 * workers)))
        t0 = time.perf_counter()
        stop_at = t0 + seconds
        duration = seconds
        samples.append(_sample(stack, conn, t0, 0))
        print(f"memory: {concurrency} in flight for {seconds:.0f} s over "
              f"{', '.join(WORKLOADS)}; sampling every second", flush=True)

        async def caller(k: int) -> None:
            nonlocal errors, done
            i = k
            while time.perf_counter() < stop_at and not stopped_early:
                name, pool = pools[i % len(pools)]
                try:
                    await asyncio.wait_for(client.predict(name, pool[i % len(pool)]), 30)
                    done += 1
                except Exception:
                    errors += 1
                    await asyncio.sleep(0.05)
                i += concurrency

        async def sampler() -> None:
            nonlocal stopped_early, duration
            next_at = t0 + 1.0
            while next_at <= stop_at + 0.5 and not stopped_early:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                sample = await asyncio.to_thread(_sample, stack, conn, t0, done)
                samples.append(sample)
                if sample["redis_used_memory_mib"] > max_redis_mib:
                    # A safety stop: this machine is shared, and the answer is already clear.
                    stopped_early = (f"Redis used_memory passed {max_redis_mib:.0f} MiB at "
                                     f"t={sample['t_s']:.0f}s; load stopped early")
                    duration = sample["t_s"]
                    print(f"  {stopped_early}", flush=True)
                if int(sample["t_s"]) % 10 == 0:
                    print(f"  t={sample['t_s']:6.1f}s workers {sample['worker_rss_mib']:7.1f} MiB"
                          f"  redis {sample['redis_used_memory_mib']:7.1f} MiB"
                          f"  keys {sample['redis_keys']:8.0f}  done {done}", flush=True)
                next_at += 1.0

        await asyncio.gather(sampler(), *(caller(k) for k in range(concurrency)))
        await asyncio.sleep(1.0)  # in-flight replies land
        samples.append(_sample(stack, conn, t0, done))
        kinds = await asyncio.to_thread(key_kinds, conn)
    finally:
        conn.close()
        await client.close()
        await asyncio.to_thread(stack.stop)
    metrics = ("worker_rss_mib", "redis_used_memory_mib", "redis_rss_mib", "redis_keys",
               "request_stream_len", "reply_stream_entries")
    return {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine.describe(),
        "options": {"seconds": seconds, "concurrency": concurrency, "workers": workers,
                    "inferis_batch": list(batch), "warmup_s": warmup_s,
                    "client_ttl_ms": ttl_ms or "SDK default", "max_redis_mib": max_redis_mib},
        "requests": done,
        "errors": errors,
        "throughput_rps": round(done / max(duration, 1e-9), 1),
        "stopped_early": stopped_early,
        "summary": {
            m: assess(samples, warmup_s, m,
                      float(concurrency) if m in _STREAMS else _ALLOWANCE[m])
            for m in metrics
        },
        "key_kinds_at_end": kinds,
        "samples": samples,
    }


def print_summary(doc: dict[str, Any]) -> None:
    print(f"\nmemory under load ({doc['options']['concurrency']} in flight, "
          f"{doc['options']['seconds']} s, {doc['requests']} requests, {doc['errors']} errors)")
    if doc["stopped_early"]:
        print(f"STOPPED EARLY: {doc['stopped_early']}")
    print(f"machine: {machine.headline(doc['machine'])}")
    print("(after warm-up: mean of its first and last thirds, and the slope per minute)")
    print(f"{'metric':<24}{'start':>10}{'warmed':>10}{'end':>10}{'max':>10}"
          f"{'1st third':>11}{'last third':>11}{'/min':>11}  flat")
    for metric, s in doc["summary"].items():
        warmed = "-" if s["after_warmup"] is None else s["after_warmup"]
        print(f"{metric:<24}{s['start']:>10}{warmed:>10}{s['end']:>10}{s['max']:>10}"
              f"{s.get('first_third_mean', '-'):>11}{s.get('last_third_mean', '-'):>11}"
              f"{s.get('slope_per_min', '-'):>11}  {s.get('flat', '-')}")
    print("keys at the end, by kind (a SCAN of at most 20000 keys):")
    for kind, count in doc["key_kinds_at_end"].items():
        print(f"  {count:>8}  {kind}")


def write(doc: dict[str, Any], name: str = "memory") -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path
