"""A bounded closed-loop load generator that accounts for every request.

Each request ends in exactly one bucket: answered correctly, answered wrongly,
refused or failed with an error the caller saw, or lost (its enqueue was
acknowledged and no answer ever came). Second answers to one request show up
as the client's unmatched replies.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from inferis.client import AsyncClient, InferisError, NoAnswerError

Case = tuple[dict[str, Any], np.ndarray]  # inputs, expected "label" output


@dataclass
class Tally:
    sent: int = 0
    correct: int = 0
    wrong: int = 0
    lost: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    # (monotonic start, latency) of every answered request, to split by fault windows
    samples: list[tuple[float, float]] = field(default_factory=list)
    duplicates: int = 0
    messages: list[str] = field(default_factory=list)  # the first few errors, verbatim

    @property
    def answered(self) -> int:
        return self.correct + self.wrong + sum(self.errors.values())

    def p99_ms(self) -> float:
        return _p99_ms(self.latencies_s)

    def p99_split_ms(
        self, windows: list[tuple[float, float]], recovery_s: float = 2.0
    ) -> tuple[float, float]:
        """p99 of requests in flight during a fault (or its recovery) and of the rest."""
        inside, outside = [], []
        for started, latency in self.samples:
            hit = any(started <= b + recovery_s and started + latency >= a for a, b in windows)
            (inside if hit else outside).append(latency)
        return _p99_ms(inside), _p99_ms(outside)

    def max_during_ms(self, windows: list[tuple[float, float]], recovery_s: float = 2.0) -> float:
        """The longest wait of a request in flight during a fault (or its recovery)."""
        return max((latency * 1000 for started, latency in self.samples
                    if any(started <= b + recovery_s and started + latency >= a
                           for a, b in windows)), default=0.0)

    def summary(self) -> str:
        return (
            f"sent={self.sent} correct={self.correct} wrong={self.wrong} lost={self.lost} "
            f"errors={dict(self.errors)} duplicates={self.duplicates} p99={self.p99_ms():.1f}ms"
        )


def _p99_ms(latencies: list[float]) -> float:
    if not latencies:
        return 0.0
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


async def drive(
    client: AsyncClient,
    model: str,
    case: Callable[[int], Case],
    *,
    total: int,
    concurrency: int,
    stop: asyncio.Event | None = None,
) -> Tally:
    """Send up to ``total`` requests (fewer if ``stop`` is set), ``concurrency`` at a
    time, and account for each."""
    tally = Tally()
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            if stop is not None and stop.is_set():
                return
            inputs, expected = case(i)
            tally.sent += 1
            started = time.perf_counter()
            try:
                out = await client.predict(model, inputs)
            except NoAnswerError:
                tally.lost += 1
                continue
            except InferisError as exc:
                tally.errors[exc.code] += 1
                if len(tally.messages) < 5:
                    tally.messages.append(f"{exc.code} {exc.message}")
                continue
            except (RedisError, OSError) as exc:  # Redis unreachable past the retry window
                tally.errors[type(exc).__name__] += 1
                continue
            latency = time.perf_counter() - started
            tally.latencies_s.append(latency)
            tally.samples.append((time.monotonic() - latency, latency))
            if np.array_equal(out["label"], expected):
                tally.correct += 1
            else:
                tally.wrong += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    tally.duplicates = client.unmatched_answers
    return tally
