"""The batch window: how long a fresh batch may wait for more requests (Triton's
``max_queue_delay``), decided from the requests already in hand."""

from __future__ import annotations

from collections.abc import Sequence

from .request import Request


def batch_delay_us(requests: Sequence[Request]) -> int:
    """The longest ``max_queue_delay_us`` among models whose batch is not full yet
    (0: run now). A request that cannot share rows counts as a full batch."""
    rows: dict[str, int] = {}
    limits: dict[str, tuple[int, int]] = {}
    for r in requests:
        if not r.ready:
            continue
        assert r.info is not None
        batching = r.info.batching
        digest = r.info.digest
        rows[digest] = rows.get(digest, 0) + (r.rows or batching.max_batch_size)
        limits[digest] = (batching.max_batch_size, batching.max_queue_delay_us)
    return max(
        (delay for d, (size, delay) in limits.items() if delay and rows[d] < size), default=0
    )
