"""``run``: start each system in turn, check its answers, sweep the concurrency points."""

from __future__ import annotations

import asyncio
import datetime as dt
import traceback
from dataclasses import dataclass
from typing import Any

from . import machine, roundtrips, targets
from .loadgen import blocking_loop, closed_loop, freeze_heap
from .stack import request_inputs
from .targets.base import RunConfig, Series, Target
from .targets.inferis import InferisTarget
from .workloads import Workload, build, matches

# Requests whose answers are compared with in-process onnxruntime before timing.
VERIFY_REQUESTS = (0, 1, 2)


@dataclass(frozen=True)
class RunOptions:
    workloads: list[str]
    systems: list[str]
    concurrency: list[int]
    duration_s: float
    warmup_s: float
    tag: str
    config: RunConfig
    roundtrip_calls: int = 500


def _log(message: str) -> None:
    print(message, flush=True)


async def _verify(target: Target, workload: Workload) -> str | None:
    """None if the system answers like in-process onnxruntime does; else what differs."""
    reference = workload.reference()
    checked = target.returned_outputs(workload)
    for index in VERIFY_REQUESTS:
        got = await target.answer(workload, index)
        if got is None:
            return None
        expected = reference(workload.requests[index])
        problem = matches({k: v for k, v in expected.items() if k in checked}, got)
        if problem:
            return f"request {index}: {problem}"
    return None


async def _sweep(series: Series, opts: RunOptions) -> list[dict[str, Any]]:
    points = []
    for concurrency in series.concurrencies or opts.concurrency:
        if series.blocking is not None:
            stats = blocking_loop(series.blocking, opts.duration_s, warmup_s=opts.warmup_s)
        else:
            assert series.open is not None
            call = await series.open(concurrency)
            try:
                stats = await closed_loop(
                    call, concurrency, opts.duration_s, warmup_s=opts.warmup_s,
                    request_timeout_s=opts.config.request_timeout_s,
                )
            finally:
                await series.close()
        _log(f"    {series.label:<14} {concurrency:>4} in flight: "
             f"{stats.throughput_rps:>9.0f} req/s  p50 {stats.p50_ms:8.2f} ms  "
             f"p99 {stats.p99_ms:8.2f} ms  errors {stats.errors}"
             + (f"  ({stats.first_error})" if stats.first_error else ""))
        points.append(stats.as_dict())
    return points


async def _measure_roundtrips(target: Target, workloads: list[Workload],
                              calls: int) -> list[dict[str, Any]]:
    if not isinstance(target, InferisTarget) or target.client is None or target.url is None:
        return []
    chosen = next((w for w in workloads if w.name == "fraud"), workloads[0])
    out = []
    for concurrency in (1, 64):
        _log(f"  round trips: {calls} calls of {chosen.name} at {concurrency} in flight")
        try:
            out.append(await roundtrips.measure(
                target.url, target.client, chosen.name, request_inputs(chosen),
                calls=calls, concurrency=concurrency,
            ))
        except Exception as exc:
            out.append({"error": f"{type(exc).__name__}: {exc}"})
    return out


async def run_suite(opts: RunOptions) -> dict[str, Any]:
    _log(f"machine: {machine.headline(machine.describe())}")
    _log(f"building workloads: {', '.join(opts.workloads)}")
    workloads = build(opts.workloads)
    freeze_heap()
    doc: dict[str, Any] = {
        "tag": opts.tag,
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine.describe(),
        "options": {
            "concurrency": opts.concurrency, "duration_s": opts.duration_s,
            "warmup_s": opts.warmup_s, "workers": opts.config.workers,
            "inferis_batch": list(opts.config.inferis_batch),
            "engine_batch": list(opts.config.engine_batch),
        },
        "workloads": {
            w.name: {
                "description": w.description,
                "request_bytes": w.request_bytes(),
                "inferis_request_bytes": w.sent_bytes(),
            }
            for w in workloads
        },
        "systems": {},
        "results": [],
    }
    for name in opts.systems:
        for target in targets.make(name, opts.config):
            await _run_target(target, workloads, opts, doc)
    return doc


async def _run_target(
    target: Target, workloads: list[Workload], opts: RunOptions, doc: dict[str, Any]
) -> None:
    """One system in one configuration: start, check its answers, sweep, stop."""
    label = target.label
    _log(f"[{label}] starting")
    system: dict[str, Any] = {
        "status": "ok", "note": target.note, "system": target.name, "variant": target.variant,
    }
    doc["systems"][label] = system
    try:
        await target.start(workloads, opts.config)
    except Exception as exc:
        system.update(status="unavailable", error=f"{type(exc).__name__}: {exc}"[:2000])
        _log(f"[{label}] could not start: {system['error']}")
        await _stop_quietly(target)
        return
    system["settings"] = target.settings
    try:
        for workload in workloads:
            await _run_workload(target, workload, opts, doc)
        if target.name == "inferis" and opts.roundtrip_calls and "roundtrips" not in doc:
            doc["roundtrips"] = await _measure_roundtrips(target, workloads, opts.roundtrip_calls)
    except Exception as exc:
        system.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        _log(f"[{label}] failed: {traceback.format_exc()}")
    finally:
        await _stop_quietly(target)
    _log(f"[{label}] stopped")


async def _run_workload(target: Target, workload: Workload, opts: RunOptions,
                        doc: dict[str, Any]) -> None:
    _log(f"  {workload.name}")
    try:
        problem = await asyncio.wait_for(_verify(target, workload), 120)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    for series in target.series(workload):
        entry: dict[str, Any] = {
            "workload": workload.name, "system": target.name, "variant": target.variant,
            "series": series.label, "verified": problem is None, "points": [],
        }
        doc["results"].append(entry)
        if problem:
            entry["error"] = f"wrong or no answer: {problem}"[:500]
            _log(f"    {series.label}: {entry['error']}")
            continue
        entry["points"] = await _sweep(series, opts)


async def _stop_quietly(target: Target) -> None:
    try:
        await target.stop()
    except Exception as exc:
        _log(f"[{target.name}] stop failed: {exc}")
