"""``python -m benchmarks chaos``: the chaos tests' scenarios, run longer, as a table.

Every request is accounted for: answered correctly, refused with an error its
caller saw, lost (enqueue acknowledged, never answered), or answered twice
(second answers the client dropped).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from tests import models, scenarios

RESULTS = Path(__file__).resolve().parent / "results"


GROUPS = ("single", "cluster")


async def run_all(faults: int, failover_requests: int,
                  groups: tuple[str, ...] = GROUPS) -> list[dict[str, Any]]:
    iris = models.iris_model()
    rows = []
    with tempfile.TemporaryDirectory(prefix="inferis-chaos-") as tmp:
        root = Path(tmp)
        steps = []
        if "single" in groups:
            steps += [
                lambda: scenarios.worker_faults(root / "w", iris, faults=faults),
                lambda: scenarios.redis_crashes(root / "a", iris, "always", crashes=faults // 2),
                lambda: scenarios.redis_crashes(root / "e", iris, "everysec",
                                                crashes=faults // 2),
                lambda: scenarios.sentinel_failover(root / "s", iris, total=failover_requests),
            ]
        if "cluster" in groups:  # 3 primaries + 3 replicas, a worker beside each primary
            steps += [
                lambda: scenarios.cluster_failover(root / "cf", iris),
                lambda: scenarios.cluster_reshard(root / "cr", iris),
                lambda: scenarios.cluster_grow_shrink(root / "cg", iris),
            ]
        for step in steps:
            result = await step()
            rows.append(result.row())
            print(_line(rows[-1]), flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in row["errors"].items()) or "-"
    faults = ", ".join(f"{k} {v}" for k, v in row["faults"].items())
    return (
        f"| {row['scenario']} | {faults} | {row['sent']:,} | {row['correct']:,} | {errors} | "
        f"{row['lost']} | {row['duplicates']} | {row['p99_during_faults_ms']:.0f} | "
        f"{row['p99_outside_faults_ms']:.0f} | {row.get('max_during_faults_ms', 0):,.0f} |"
    )


def main(faults: int, failover_requests: int, tag: str,
         groups: tuple[str, ...] = GROUPS) -> int:
    print("| scenario | faults | sent | answered correctly | errors told to callers | lost "
          "| duplicates dropped | p99 ms during faults | p99 ms outside | max ms during faults |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    rows = asyncio.run(run_all(faults, failover_requests, groups))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {RESULTS / (tag + '.json')}")
    # everysec may lose up to a second of writes on a machine crash; the others nothing
    must_keep_all = [r for r in rows if "everysec" not in r["scenario"]]
    ok = all(r["wrong"] == 0 for r in rows) and all(r["lost"] == 0 for r in must_keep_all)
    return 0 if ok else 1
