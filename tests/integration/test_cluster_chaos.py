"""Redis Cluster under load while a primary dies, slots migrate, and nodes join
and leave; every request is accounted for afterwards (slow tests). The same
scenarios are rows of ``python -m benchmarks chaos``."""

from __future__ import annotations

from pathlib import Path

import pytest

from .. import scenarios

pytestmark = pytest.mark.slow


def _accounted(result: scenarios.Result) -> None:
    tally = result.tally
    print(result.row())
    assert tally.sent > 1000
    assert tally.lost == 0 and tally.wrong == 0
    assert tally.answered == tally.sent
    assert result.workers_alive


async def test_primary_killed_loses_nothing_acknowledged(tmp_path: Path, iris) -> None:
    result = await scenarios.cluster_failover(tmp_path, iris)
    assert result.faults["failover"] == 1
    _accounted(result)
    # refusals are told to their callers: no replica to acknowledge yet
    assert set(result.tally.errors) <= {"EREPLICA", "ConnectionError", "TimeoutError"}


async def test_resharding_under_load_is_invisible_to_callers(tmp_path: Path, iris) -> None:
    result = await scenarios.cluster_reshard(tmp_path, iris)
    assert result.faults["reshard"] == 2
    _accounted(result)
    assert result.tally.correct == result.tally.sent, result.tally.messages  # no error at all


async def test_nodes_added_and_removed_under_load(tmp_path: Path, iris) -> None:
    result = await scenarios.cluster_grow_shrink(tmp_path, iris)
    assert result.faults == {"added": 1, "removed": 2}
    _accounted(result)
    assert result.tally.correct == result.tally.sent
