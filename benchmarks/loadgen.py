"""Closed-loop load: N callers, each sending its next request when the last returns.

Every run is bounded: callers stop issuing at the deadline, and each request
is cut off after ``request_timeout_s``, so a stuck server cannot hang a run.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import numpy as np

# A caller sends request number ``i`` (any integer; targets cycle their pool).


def freeze_heap() -> None:
    """Take what is alive now (the frameworks that built the models) out of the
    cyclic collector's work, as long-running servers do (``gc.freeze``): otherwise
    every full collection walks torch's object graph in the middle of a
    measurement. It applies to every load generator of the run alike."""
    gc.collect()
    gc.freeze()
Caller = Callable[[int], Awaitable[object]]


@dataclass
class PointStats:
    """One concurrency point of one system: what the table and plot show."""

    concurrency: int
    duration_s: float
    completed: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    first_error: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def summarise(
    latencies_s: list[float], concurrency: int, window_s: float, errors: int, first_error: str
) -> PointStats:
    lat = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    if lat.size == 0:
        nan = float("nan")
        return PointStats(concurrency, window_s, 0, errors, 0.0, nan, nan, nan, nan, nan,
                          first_error)
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return PointStats(
        concurrency=concurrency,
        duration_s=round(window_s, 3),
        completed=int(lat.size),
        errors=errors,
        throughput_rps=lat.size / window_s,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(lat.mean()),
        max_ms=float(lat.max()),
        first_error=first_error,
    )


async def closed_loop(
    call: Caller,
    concurrency: int,
    duration_s: float,
    *,
    warmup_s: float = 1.0,
    request_timeout_s: float = 30.0,
) -> PointStats:
    """Run ``concurrency`` callers for ``warmup_s + duration_s``; measure the last part.

    Requests that complete inside the measured window count (throughput is
    completions per second of window, whatever their latency), so neither the
    warm-up (connection set-up, first batches) nor the drain after it does.
    """
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    latencies: list[float] = []
    errors = 0
    first_error = ""

    async def one_caller(index: int) -> None:
        nonlocal errors, first_error
        i = index
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                # asyncio.timeout, not wait_for: wait_for makes a task per request, which
                # would cost the load generator more than some systems spend serving it.
                async with asyncio.timeout(request_timeout_s):
                    await call(i)
            except Exception as exc:  # a failed request is data, not a crash
                if measure_from <= time.perf_counter() <= stop_at:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                await asyncio.sleep(0.05)  # don't spin on a server that fails fast
            else:
                t1 = time.perf_counter()
                if measure_from <= t1 <= stop_at:
                    latencies.append(t1 - t0)
            i += concurrency

    await asyncio.gather(*(one_caller(k) for k in range(concurrency)))
    return summarise(latencies, concurrency, duration_s, errors, first_error)


def blocking_loop(
    call: Callable[[int], object], duration_s: float, *, warmup_s: float = 1.0
) -> PointStats:
    """One thread calling ``call`` back to back (the in-process compute floor)."""
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    latencies: list[float] = []
    i = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= stop_at:
            break
        call(i)
        t1 = time.perf_counter()
        if measure_from <= t1 <= stop_at:
            latencies.append(t1 - t0)
        i += 1
    return summarise(latencies, 1, duration_s, 0, "")
