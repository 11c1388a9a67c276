"""Dynamic batching: requests for the same model version with compatible shapes
run as one call, Triton-style.

Compatible means the same input names and dtypes, and every dimension but the
first equal; inputs are concatenated along dim 0, run once, and the outputs
split back by each request's row count. A model opts in with
``max_batch_size > 1`` in its batching metadata; ``preferred_batch_sizes``
shape how a large group is cut. If a batched run fails, or its outputs do not
have one row per input row, the requests run one by one, so one bad request
never costs the others their answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferis.client.core import ModelInfo

from .backends.base import LoadedModel
from .isolation import RunTimeout


@dataclass
class Prepared:
    """A validated request, ready for the backend."""

    key: Any  # opaque: the caller's handle (its Outcome)
    info: ModelInfo
    model: LoadedModel
    feed: dict[str, np.ndarray]
    rows: int | None  # shared first dimension of every input, None if there is none
    results: dict[str, np.ndarray] = field(default_factory=dict)
    error: Exception | None = None
    run_us: int = 0
    batch_size: int = 1


def batching_limits(info: ModelInfo) -> tuple[int, int, list[int]]:
    """(max_batch_size, max_queue_delay_us, preferred sizes) of a version."""
    b = info.batching or {}
    preferred = sorted({int(n) for n in b.get("preferred_batch_sizes", []) if int(n) > 0})
    return int(b.get("max_batch_size", 0)), int(b.get("max_queue_delay_us", 0)), preferred


def shared_rows(feed: dict[str, np.ndarray]) -> int | None:
    """The first dimension every input has in common, or None."""
    firsts = {a.shape[0] if a.ndim else None for a in feed.values()}
    if len(firsts) != 1:
        return None
    return firsts.pop()


def _group_key(p: Prepared) -> tuple[Any, ...] | None:
    max_batch, _, _ = batching_limits(p.info)
    if max_batch <= 1 or p.rows is None or p.rows > max_batch:
        return None
    signature = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in p.feed.items()))
    return (p.info.digest, p.info.backend, p.info.format, p.info.device, signature)


def _cut(group: list[Prepared], max_batch: int, preferred: list[int]) -> list[list[Prepared]]:
    """Cut a group into batches of at most ``max_batch`` rows.

    Each batch aims for the largest preferred size the remaining rows can fill
    (Triton's rule), else for ``max_batch``.
    """
    batches: list[list[Prepared]] = []
    remaining = sum(p.rows or 0 for p in group)
    start = 0
    while start < len(group):
        fitting = [n for n in preferred if n <= min(remaining, max_batch)]
        target = max(fitting) if fitting else max_batch
        batch, rows = [group[start]], group[start].rows or 0
        start += 1
        while start < len(group) and rows + (group[start].rows or 0) <= target:
            rows += group[start].rows or 0
            batch.append(group[start])
            start += 1
        remaining -= rows
        batches.append(batch)
    return batches


def plan(prepared: list[Prepared]) -> list[list[Prepared]]:
    """Batches to run, in arrival order of their first request."""
    groups: dict[tuple[Any, ...], list[Prepared]] = {}
    plan_: list[list[Prepared] | tuple[Any, ...]] = []
    for p in prepared:
        key = _group_key(p)
        if key is None:
            plan_.append([p])
        elif key in groups:
            groups[key].append(p)
        else:
            groups[key] = [p]
            plan_.append(key)
    out: list[list[Prepared]] = []
    for item in plan_:
        if isinstance(item, list):
            out.append(item)
            continue
        group = groups[item]
        max_batch, _, preferred = batching_limits(group[0].info)
        out.extend(_cut(group, max_batch, preferred))
    return out


Call = Callable[[Prepared, dict[str, np.ndarray]], tuple[dict[str, np.ndarray], int]]


def run_batch(batch: list[Prepared], call: Call) -> None:
    """Run a batch through ``call(first, feed) -> outputs``; fill each request's results.

    ``call`` raises on failure; a failed or unsplittable batch is retried one
    request at a time so each request gets its own answer.
    """
    if len(batch) > 1:
        first = batch[0]
        feed = {n: np.concatenate([p.feed[n] for p in batch]) for n in first.feed}
        total = sum(p.rows or 0 for p in batch)
        try:
            outputs, run_us = call(first, feed)
        except RunTimeout as exc:
            for p in batch:  # it hung on this batch: one retry per request would hang each time
                p.error = exc
            return
        except Exception:
            outputs = None
        if outputs is not None and all(
            getattr(v, "ndim", 0) >= 1 and v.shape[0] == total for v in outputs.values()
        ):
            bounds = np.cumsum([p.rows for p in batch])[:-1]
            parts = {n: np.split(v, bounds) for n, v in outputs.items()}
            for i, p in enumerate(batch):
                p.results = {n: parts[n][i] for n in outputs}
                p.run_us = run_us
                p.batch_size = len(batch)
            return
    for p in batch:
        try:
            p.results, p.run_us = call(p, p.feed)
        except Exception as exc:
            p.error = exc
