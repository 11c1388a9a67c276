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
from typing import Any

import numpy as np

from inferis.client.protocol.errors import BackendError, InferisError

from ..backends.base import RunTimeout
from .request import Request


def shared_rows(feed: dict[str, np.ndarray]) -> int | None:
    """The first dimension every input has in common, or None."""
    firsts = {a.shape[0] if a.ndim else None for a in feed.values()}
    if len(firsts) != 1:
        return None
    return firsts.pop()


def _group_key(r: Request) -> tuple[Any, ...] | None:
    assert r.info is not None
    batching = r.info.batching
    if not batching.enabled or r.rows is None or r.rows > batching.max_batch_size:
        return None
    signature = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in r.feed.items()))
    info = r.info
    return (info.digest, info.backend, info.format, info.device, signature)


def _cut(group: list[Request], max_batch: int, preferred: tuple[int, ...]) -> list[list[Request]]:
    """Cut a group into batches of at most ``max_batch`` rows.

    Each batch aims for the largest preferred size the remaining rows can fill
    (Triton's rule), else for ``max_batch``.
    """
    batches: list[list[Request]] = []
    remaining = sum(r.rows or 0 for r in group)
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


def plan(requests: list[Request]) -> list[list[Request]]:
    """Batches to run, in arrival order of their first request."""
    groups: dict[tuple[Any, ...], list[Request]] = {}
    order: list[list[Request] | tuple[Any, ...]] = []
    for r in requests:
        key = _group_key(r)
        if key is None:
            order.append([r])
        elif key in groups:
            groups[key].append(r)
        else:
            groups[key] = [r]
            order.append(key)
    out: list[list[Request]] = []
    for item in order:
        if isinstance(item, list):
            out.append(item)
            continue
        group = groups[item]
        batching = group[0].info.batching  # type: ignore[union-attr]
        out.extend(_cut(group, batching.max_batch_size, batching.preferred_sizes))
    return out


Call = Callable[[Request, dict[str, np.ndarray]], tuple[dict[str, np.ndarray], int]]


def run_batch(batch: list[Request], call: Call) -> None:
    """Run a batch through ``call(first, feed) -> (outputs, run_us)``; fill each
    request's results. ``call`` raises InferisError on failure; a failed or
    unsplittable batch is retried one request at a time so each request gets
    its own answer."""
    if len(batch) > 1:
        first = batch[0]
        feed = {n: np.concatenate([r.feed[n] for r in batch]) for n in first.feed}
        total = sum(r.rows or 0 for r in batch)
        try:
            outputs, run_us = call(first, feed)
        except RunTimeout as exc:
            for r in batch:  # it hung on this batch: one retry per request would hang each time
                r.fail(exc)
            return
        except Exception:
            outputs = None
        if outputs is not None and all(
            getattr(v, "ndim", 0) >= 1 and v.shape[0] == total for v in outputs.values()
        ):
            bounds = np.cumsum([r.rows for r in batch])[:-1]
            parts = {n: np.split(v, bounds) for n, v in outputs.items()}
            for i, r in enumerate(batch):
                r.results = {n: parts[n][i] for n in outputs}
                r.run_us = run_us
                r.batch_size = len(batch)
            return
    for r in batch:
        try:
            r.results, r.run_us = call(r, r.feed)
        except InferisError as exc:
            r.fail(exc)
        except Exception as exc:  # call() converts backend errors; this is a last guard
            r.fail(BackendError(f"{type(exc).__name__}: {exc}"))
