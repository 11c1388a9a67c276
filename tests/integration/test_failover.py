"""Sentinel failover under load: nothing acknowledged with WAIT 1 is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from .. import scenarios

pytestmark = pytest.mark.slow


async def test_primary_killed_under_load_loses_nothing(tmp_path: Path, iris) -> None:
    result = await scenarios.sentinel_failover(tmp_path, iris, total=1500)
    print(result.row())
    tally = result.tally
    assert result.faults["failover"] == 1
    assert tally.lost == 0 and tally.wrong == 0
    assert tally.correct > 0 and tally.answered == tally.sent == 1500
    # every refusal was reported to its caller: not enough replicas during the gap,
    # or Redis unreachable past the client's retry window
    assert set(tally.errors) <= {"EREPLICA", "ConnectionError", "TimeoutError"}
    assert result.workers_alive  # the workers followed the promotion
