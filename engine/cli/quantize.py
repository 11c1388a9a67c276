"""``inferis model quantize``: an int8 variant as a new version, stored only when it
stays within the caller's bounds on a sample (engine/models/quantize.py)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

from inferis.client import Client
from inferis.client.protocol.errors import AccuracyError, ArgumentError
from inferis.client.protocol.models import ModelInfo

from ..models import quantize as Q

COMMANDS = ("quantize",)
# What the variant does not inherit from the original's META: it is another graph.
_NOT_INHERITED = ("optimized", "graph_optimization", "quantized")


def add_commands(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    q = msub.add_parser(
        "quantize", parents=[common],
        help="store a dynamically quantized int8 variant (ONNX) as a new version, if it "
             "stays within bounds on a sample")
    q.add_argument("name")
    q.add_argument("--version", default=None, help="the original (default: latest)")
    q.add_argument("--sample", action="append", default=[], metavar="[INPUT=]KEY_OR_FILE",
                   help="sample inputs: a tensor key in Redis, or a .npy/.npz file; "
                        f"default {Q.SAMPLE_ROWS} random rows drawn from the signature")
    q.add_argument("--max-diff", type=float, default=None,
                   help="refuse if any float output differs by more than this")
    q.add_argument("--min-agreement", type=float, default=0.99,
                   help="refuse if fewer rows than this share predict the same class "
                        "(default 0.99)")
    q.add_argument("--ops", default="", metavar="OP,OP",
                   help="node types to quantize, e.g. MatMul,Gemm (default: ONNX Runtime's "
                        "choice, Conv included)")
    q.add_argument("--sign", type=Path, default=None, metavar="KEY.pem",
                   help="sign the new version with this ed25519 private key")
    q.add_argument("--by", default="", help="who stores it (after the ACL user, in the audit)")


def _sample(client: Client, texts: list[str], inputs: list[str]) -> tuple[dict[str, Any], str]:
    """The feed named by --sample, and where it came from."""
    feed: dict[str, Any] = {}
    for text in texts:
        name, sep, source = text.partition("=")
        if not sep or not name or name not in inputs:
            name, source = "", text
        path = Path(source)
        if path.is_file():
            loaded = np.load(path, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                feed.update({k: loaded[k] for k in loaded.files})
                continue
            value = loaded
        else:
            value = client.tensorget(source)
        if not name:
            if len(inputs) != 1:
                raise ArgumentError(f"the model takes {len(inputs)} inputs ({', '.join(inputs)}):"
                                    " give each as --sample INPUT=KEY_OR_FILE, or one .npz")
            name = inputs[0]
        feed[name] = value
    missing = [n for n in inputs if n not in feed]
    if missing:
        raise ArgumentError(f"the sample lacks input(s) {', '.join(missing)}")
    return {n: feed[n] for n in inputs}, ", ".join(texts)


def run(client: Client, ns: argparse.Namespace) -> None:
    if not 0.0 <= ns.min_agreement <= 1.0:
        raise ArgumentError(f"--min-agreement is a share from 0 to 1, got {ns.min_agreement}")
    info, blob = client.modelget(ns.name, ns.version, blob=True)
    assert isinstance(info, ModelInfo)
    if info.encrypted:
        raise ArgumentError(f"{info.label} is encrypted at rest; quantize reads plain files")
    if info.extra.get("optimized"):
        print(f"note: {info.label} was optimized at store time; nodes ONNX Runtime fused "
              "(FusedGemm, ...) stay float: quantize a version stored without --optimize",
              file=sys.stderr)
    ops = [o.strip() for o in ns.ops.split(",") if o.strip()]
    quantized = Q.quantize(info, blob, ops)
    extra = {k: v for k, v in info.extra.items() if k not in _NOT_INHERITED}
    variant = dataclasses.replace(info, extra=extra)
    original_model, variant_model = Q.load_here(info, blob), Q.load_here(variant, quantized)
    try:
        inputs = [s.name for s in original_model.inputs]
        if ns.sample:
            feed, source = _sample(client, ns.sample, inputs)
        else:
            feed, source = Q.random_sample(original_model.inputs), "random, from the signature"
        result = Q.compare(original_model.run(dict(feed)), variant_model.run(dict(feed)))
    finally:
        original_model.close()
        variant_model.close()
    agreement = "n/a" if result.agreement is None else f"{result.agreement:.2%}"
    bound = "none" if ns.max_diff is None else f"{ns.max_diff:g}"
    print(f"{info.label} -> int8 (onnxruntime quantize_dynamic): {info.size:,} -> "
          f"{len(quantized):,} bytes ({len(quantized) / max(1, info.size):.2f}x)")
    print(f"on {result.rows} sample rows ({source}): largest absolute difference "
          f"{result.max_abs_diff:.6g} (bound {bound}), "
          f"classes agree {agreement} ({result.classes_from}; bound {ns.min_agreement:.2%})")
    refusal = _refusal(result, ns.max_diff, ns.min_agreement)
    if refusal:
        raise AccuracyError(f"{refusal}; the int8 variant of {info.label} was not stored")
    extra["quantized"] = {
        "method": "onnxruntime quantize_dynamic", "weights": "int8", "ops": ops or "default",
        "from_version": info.version, "from_digest": info.digest,
        "sample_rows": result.rows, "max_abs_diff": result.max_abs_diff,
        "agreement": result.agreement,
    }
    options: dict[str, Any] = {"by": ns.by}
    if ns.sign is not None:
        options["signing_key"] = ns.sign
    stored = client.modelstore(
        info.name, info.backend, quantized, format=info.format, device=info.device,
        inputs=list(info.inputs), outputs=list(info.outputs),
        batch=info.batching if info.batching.max_batch_size else None,
        tags={**info.tags, "variant": "int8"}, extra=extra, **options)
    state = "stored" if stored.created else "already stored"
    print(f"{stored.name} version {stored.version} {state} (sha256 {stored.digest})")


def _refusal(result: Q.Comparison, max_diff: float | None, min_agreement: float) -> str:
    if max_diff is not None and result.max_abs_diff > max_diff:
        return (f"its outputs differ by up to {result.max_abs_diff:.6g}, more than --max-diff "
                f"{max_diff:g} allows")
    if result.agreement is not None and result.agreement < min_agreement:
        return (f"its classes agree on {result.agreement:.2%} of the sample, less than "
                f"--min-agreement {min_agreement:.2%}")
    return ""
