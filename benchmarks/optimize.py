"""``python -m benchmarks optimize``: what store-time optimization and int8 quantization
buy per model run, against the original.

Each workload's model in the variants ``inferis model store --optimize`` and
``inferis model quantize`` store, loaded and run in this process by the backend
code the workers run (one thread, batch 1, the workload's request pool cycled):

- ONNX: the original loaded with ONNX Runtime's optimizations off, and at its
  default (``all``, what a worker does without settings); the graph optimized at
  store time (``extended``, ``all``) and loaded as it is; int8 variants
  (``quantize_dynamic`` with its default node types, and MatMul/Gemm only);
- TorchScript (fraud, cnn): the traced module, and frozen at store time with
  ``optimize_for_inference`` run at load.

Reported: p50 and p99 per run, load time, file size, and the largest absolute
difference and class agreement against the original on the request pool.
"""

from __future__ import annotations

import hashlib
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from inferis.client.protocol.errors import InferisError
from inferis.client.protocol.models import ModelInfo
from inferis.engine.backends.base import BackendOptions, LoadedModel
from inferis.engine.backends.registry import load_model
from inferis.engine.models import optimize, quantize

from .workloads import Workload, build

RESULTS = Path(__file__).resolve().parent / "results"


def _info(backend: str, blob: bytes, extra: dict[str, Any] | None = None) -> ModelInfo:
    return ModelInfo(name="bench", version=1, digest=hashlib.sha256(blob).hexdigest(),
                     backend=backend, extra=dict(extra or {}), size=len(blob))


def variants(workload: Workload) -> list[tuple[str, str, bytes, dict[str, Any]]]:
    """(label, backend, file, META) of every variant; a variant that cannot be made is
    listed with an empty file and its reason in META ``error``."""
    out: list[tuple[str, str, bytes, dict[str, Any]]] = [
        ("onnx original, optimizations off", "onnx", workload.onnx,
         {"graph_optimization": "disabled"}),
        ("onnx original, ORT default (all)", "onnx", workload.onnx, {}),
    ]
    for level in ("extended", "all"):
        made = optimize.optimize_onnx(workload.onnx, level)
        out.append((f"onnx --optimize {level}", "onnx", made.blob, made.meta))
    for label, ops in (("onnx int8", ()), ("onnx int8 MatMul,Gemm", ("MatMul", "Gemm"))):
        try:
            out.append((label, "onnx", quantize.quantize_onnx(workload.onnx, ops), {}))
        except InferisError as exc:
            out.append((label, "onnx", b"", {"error": exc.message}))
    if workload.module is not None:
        import torch

        buffer = io.BytesIO()
        first = workload.requests[0]
        args = tuple(torch.from_numpy(first[n]) for n in workload.input_names)
        torch.jit.save(torch.jit.trace(workload.module, args), buffer)
        scripted = buffer.getvalue()
        out.append(("torchscript original", "torch", scripted, {}))
        made = optimize.optimize_torchscript(scripted)
        out.append(("torchscript --optimize (frozen; optimize_for_inference at load)", "torch",
                    made.blob, made.meta))
    return out


def _time(run: Callable[[int], object], budget_s: float, most: int) -> list[float]:
    for i in range(20):  # warm
        run(i)
    times: list[float] = []
    ends = time.perf_counter() + budget_s
    i = 0
    while time.perf_counter() < ends and len(times) < most:
        t0 = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - t0)
        i += 1
    return times


def measure(workload: Workload, budget_s: float) -> list[dict[str, Any]]:
    options = BackendOptions()  # one intra-op and one inter-op thread, as a worker
    reference: list[dict[str, np.ndarray]] | None = None
    rows = []
    for label, backend, blob, meta in variants(workload):
        if not blob:
            rows.append({"variant": label, "error": meta["error"]})
            continue
        loads = []
        model: LoadedModel | None = None
        for _ in range(3):
            started = time.perf_counter()
            model = load_model(blob, _info(backend, blob, meta), options)
            loads.append(time.perf_counter() - started)
        assert model is not None
        # A traced module names its inputs itself: the pool binds to them by position.
        feeds = [dict(zip([s.name for s in model.inputs],
                          [r[n] for n in workload.input_names], strict=True))
                 for r in workload.requests]
        answers = [model.run(dict(f)) for f in feeds]
        if reference is None:
            reference = answers
        names = workload.output_names if backend == "onnx" else list(answers[0])
        expected = [dict(zip(names, a.values(), strict=True)) for a in reference]
        got = [dict(zip(names, a.values(), strict=True)) for a in answers]
        compared = quantize.compare(_stack(expected), _stack(got))
        times = _time(lambda i, m=model, pool=feeds: m.run(dict(pool[i % len(pool)])),
                      budget_s, 5000)
        model.close()
        rows.append({
            "variant": label, "size_bytes": len(blob),
            "load_ms": round(statistics.median(loads) * 1000, 2),
            "p50_us": round(float(np.percentile(times, 50)) * 1e6, 1),
            "p99_us": round(float(np.percentile(times, 99)) * 1e6, 1),
            "runs": len(times), "max_abs_diff": compared.max_abs_diff,
            "agreement": compared.agreement, "classes_from": compared.classes_from,
        })
    return rows


def _stack(answers: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {n: np.concatenate([np.asarray(a[n]) for a in answers]) for n in answers[0]}


def main(names: list[str], budget_s: float, tag: str) -> int:
    doc: dict[str, Any] = {"budget_s": budget_s, "cores": psutil.cpu_count(), "workloads": {}}
    for workload in build(names):
        rows = measure(workload, budget_s)
        doc["workloads"][workload.name] = {"description": workload.description, "rows": rows}
        base = next(r for r in rows if "p50_us" in r and "default" in r["variant"])
        print(f"\n{workload.description}")
        print("| variant | p50 µs per run | p99 µs | vs ORT default | load ms | size | "
              "max abs diff | classes agree |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            if "error" in r:
                print(f"| {r['variant']} | not made: {r['error'][:70]} | | | | | | |")
                continue
            agree = "-" if r["agreement"] is None else f"{r['agreement']:.1%}"
            print(f"| {r['variant']} | {r['p50_us']:,.1f} | {r['p99_us']:,.1f} | "
                  f"{r['p50_us'] / base['p50_us']:.2f}x | {r['load_ms']:.1f} | "
                  f"{r['size_bytes']:,} | {r['max_abs_diff']:.3g} | {agree} |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{tag}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {path}")
    return 0
