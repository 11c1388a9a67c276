"""Command line: ``python -m benchmarks run|memory|chaos|cache|optimize|... [options]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import uvloop

from . import memory, report, runner
from .targets import SYSTEMS, RunConfig
from .workloads import WORKLOADS

WORK_DIR = Path(__file__).resolve().parent / ".work"


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _pair(kind: type) -> object:
    def parse(text: str) -> tuple[int, float]:
        parts = _csv(text)
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"expected SIZE,WAIT, got {text!r}")
        try:
            return int(parts[0]), kind(parts[1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected SIZE,WAIT numbers, got {text!r}") from None

    return parse


def _choices(valid: tuple[str, ...]) -> object:
    def parse(text: str) -> list[str]:
        names = _csv(text)
        unknown = [n for n in names if n not in valid]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; choose from {valid}")
        return names

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="concurrency sweeps of every system and workload")
    run.add_argument("--quick", action="store_true",
                     help="smoke run: 2 s per point, 1 and 64 in flight")
    run.add_argument("--duration", type=float, help="seconds measured per point (default 10)")
    run.add_argument("--warmup", type=float, help="seconds before measuring (default 2)")
    run.add_argument("--concurrency", type=_ints, help="requests in flight (default 1,8,64,256)")
    run.add_argument("--workloads", type=_choices(WORKLOADS), default=list(WORKLOADS),
                     help=f"comma-separated, from {','.join(WORKLOADS)}")
    run.add_argument("--systems", type=_choices(SYSTEMS), default=list(SYSTEMS),
                     help=f"comma-separated, from {','.join(SYSTEMS)}")
    run.add_argument("--inferis-workers", type=int, default=2,
                     help="inferis worker processes; the other engines get as many (default 2)")
    run.add_argument("--inferis-batch", type=_pair(int), default=(64, 0),
                     metavar="SIZE,DELAY_US", help="inferis model batching (default 64,0)")
    run.add_argument("--engine-batch", type=_pair(float), default=(64, 1.0),
                     metavar="SIZE,WAIT_MS",
                     help="batching of mlserver and rayserve; bentoml gets SIZE (default 64,1)")
    run.add_argument("--inferis-ttl-ms", type=int,
                     help="TTL of request tensors in Redis (default: the SDK's)")
    run.add_argument("--roundtrip-calls", type=int, default=500,
                     help="predict calls for the Redis command count (0: skip)")
    run.add_argument("--tag", help="results file name (default: quick or full)")

    chaos = sub.add_parser("chaos", help="faults under load; every request accounted for")
    chaos.add_argument("--faults", type=int, default=20,
                       help="worker faults; half as many Redis crashes per fsync mode")
    chaos.add_argument("--failover-requests", type=int, default=5000)
    chaos.add_argument("--tag", default="chaos")
    chaos.add_argument("--only", choices=["single", "cluster"],
                       help="only the single-Redis/Sentinel rows, or only the Redis Cluster rows")

    scale = sub.add_parser("scale", help="throughput and CPU per request, single Redis "
                           "and Redis Cluster of 1, 2, 3 primaries")
    scale.add_argument("--concurrency", type=int, default=256)
    scale.add_argument("--duration", type=float, default=8.0)
    scale.add_argument("--warmup", type=float, default=2.0)
    scale.add_argument("--tag", default="scale")

    fair = sub.add_parser("fairness", help="one caller's p99 under another caller's flood")
    fair.add_argument("--concurrency", type=int, default=8)
    fair.add_argument("--flood", type=int, default=256)
    fair.add_argument("--bound", type=int, default=64)
    fair.add_argument("--duration", type=float, default=8.0)
    fair.add_argument("--tag", default="fairness")

    life = sub.add_parser("lifecycle", help="latency while an alias flips between versions")
    life.add_argument("--concurrency", type=int, default=64)
    life.add_argument("--duration", type=float, default=10.0)
    life.add_argument("--flips", type=int, default=20)
    life.add_argument("--tag", default="lifecycle")

    cache = sub.add_parser("cache", help="the prediction cache: repeated (Zipf) and fresh "
                           "inputs, cache off and on")
    cache.add_argument("--workload", choices=WORKLOADS, default="cnn")
    cache.add_argument("--concurrency", type=int, default=16)
    cache.add_argument("--duration", type=float, default=5.0)
    cache.add_argument("--warmup", type=float, default=1.0)
    cache.add_argument("--distinct", type=int, default=1000,
                       help="distinct inputs the Zipf stream draws from")
    cache.add_argument("--workers", type=int, default=1)
    cache.add_argument("--tag", default="cache")

    opt = sub.add_parser("optimize", help="original vs store-time optimized vs int8 "
                         "quantized: time per run, load time, size")
    opt.add_argument("--workloads", type=_choices(WORKLOADS), default=list(WORKLOADS))
    opt.add_argument("--seconds", type=float, default=2.0, help="timing budget per variant")
    opt.add_argument("--tag", default="optimize")

    brk = sub.add_parser("breakdown", help="where one request's time goes, at 1 in flight")
    brk.add_argument("--requests", type=int, default=3000)
    brk.add_argument("--tag", default="breakdown")

    mem = sub.add_parser("memory", help="worker RSS and Redis memory under 256 in flight")
    mem.add_argument("--seconds", type=float, default=300.0)
    mem.add_argument("--concurrency", type=int, default=256)
    mem.add_argument("--warmup", type=float, help="seconds before 'flat' is judged "
                     "(default: a fifth of --seconds, at most 60)")
    mem.add_argument("--inferis-workers", type=int, default=2)
    mem.add_argument("--inferis-batch", type=_pair(int), default=(64, 0), metavar="SIZE,DELAY_US")
    mem.add_argument("--ttl-ms", type=int, help="client TTL of request tensors "
                     "(default: the SDK's)")
    mem.add_argument("--max-redis-mib", type=float, default=4096.0,
                     help="stop the load early if Redis used_memory passes this (default 4096)")
    mem.add_argument("--tag", default="memory", help="results file name (default: memory)")
    return p


def cmd_run(ns: argparse.Namespace) -> int:
    duration = ns.duration if ns.duration is not None else (2.0 if ns.quick else 10.0)
    warmup = ns.warmup if ns.warmup is not None else (1.0 if ns.quick else 2.0)
    concurrency = ns.concurrency or ([1, 64] if ns.quick else [1, 8, 64, 256])
    opts = runner.RunOptions(
        workloads=ns.workloads,
        systems=ns.systems,
        concurrency=concurrency,
        duration_s=duration,
        warmup_s=warmup,
        tag=ns.tag or ("quick" if ns.quick else "full"),
        config=RunConfig(
            work_dir=WORK_DIR,
            workers=ns.inferis_workers,
            inferis_batch=ns.inferis_batch,
            inferis_ttl_ms=ns.inferis_ttl_ms,
            engine_batch=ns.engine_batch,
        ),
        roundtrip_calls=ns.roundtrip_calls,
    )
    started = time.monotonic()
    # Every load generator runs on uvloop, as people who load-test for speed run them.
    doc = uvloop.run(runner.run_suite(opts))
    doc["wall_time_s"] = round(time.monotonic() - started, 1)
    paths = report.write(doc)
    print()
    print(report.markdown(doc))
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {doc['wall_time_s']} s")
    return 0


def cmd_memory(ns: argparse.Namespace) -> int:
    warmup = ns.warmup if ns.warmup is not None else min(60.0, ns.seconds / 5)
    doc = uvloop.run(memory.run_memory(
        seconds=ns.seconds, concurrency=ns.concurrency, workers=ns.inferis_workers,
        batch=ns.inferis_batch, warmup_s=warmup, work_dir=WORK_DIR, ttl_ms=ns.ttl_ms,
        max_redis_mib=ns.max_redis_mib,
    ))
    memory.print_summary(doc)
    print(f"wrote {memory.write(doc, ns.tag)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    if ns.command == "breakdown":
        from . import breakdown

        doc = breakdown.run_breakdown(ns.requests, WORK_DIR)
        breakdown.print_breakdown(doc)
        print(f"wrote {breakdown.write(doc, ns.tag)}")
        return 0
    if ns.command == "fairness":
        from . import fairness

        return fairness.main(ns.concurrency, ns.flood, ns.bound, ns.duration, ns.tag)
    if ns.command == "cache":
        from . import cache

        return cache.main(ns.workload, ns.concurrency, ns.duration, ns.warmup, ns.distinct,
                          ns.workers, ns.tag)
    if ns.command == "optimize":
        from . import optimize

        return optimize.main(ns.workloads, ns.seconds, ns.tag)
    if ns.command == "lifecycle":
        from . import lifecycle

        return lifecycle.main(ns.concurrency, ns.duration, ns.flips, ns.tag)
    if ns.command == "scale":
        from . import scale as scaling

        return scaling.main(ns.concurrency, ns.duration, ns.warmup, ns.tag)
    if ns.command == "chaos":
        from . import chaos  # imports the test scenarios only when asked

        groups = (ns.only,) if ns.only else chaos.GROUPS
        return chaos.main(ns.faults, ns.failover_requests, ns.tag, groups)
    return cmd_run(ns) if ns.command == "run" else cmd_memory(ns)


if __name__ == "__main__":
    sys.exit(main())
