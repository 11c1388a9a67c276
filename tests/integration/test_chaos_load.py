"""Faults injected while a few hundred requests are in flight; every request is
accounted for afterwards (slow tests, bounded in count and time). The same
scenarios run longer in ``python -m benchmarks chaos``."""

from __future__ import annotations

from pathlib import Path

import pytest

from .. import scenarios

pytestmark = pytest.mark.slow


async def test_workers_killed_and_stopped_under_load(tmp_path: Path, iris) -> None:
    result = await scenarios.worker_faults(tmp_path, iris, faults=6)
    print(result.row())
    assert result.faults["kill"] >= 1 and result.faults["stop"] >= 1
    tally = result.tally
    assert tally.sent > 1000 and tally.lost == 0 and tally.wrong == 0
    assert tally.correct == tally.sent  # a worker's death is invisible to callers


@pytest.mark.parametrize("fsync", ["always", "everysec"])
async def test_redis_killed_under_load(tmp_path: Path, iris, fsync: str) -> None:
    result = await scenarios.redis_crashes(tmp_path, iris, fsync, crashes=3)
    print(result.row())
    tally = result.tally
    assert result.faults["crash"] == 3 and tally.sent > 500
    assert tally.wrong == 0 and tally.answered + tally.lost == tally.sent
    assert not (set(tally.errors) - {"ConnectionError", "TimeoutError"})
    if fsync == "always":
        assert tally.lost == 0  # an acknowledged enqueue is on disk
    assert result.workers_alive
