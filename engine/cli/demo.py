"""``inferis demo``: train a model on the spot, store it in Redis, serve it.

Needs the ``demo`` extra (scikit-learn, skl2onnx). Shows the same run from
the Python SDK (sync and asyncio) and from plain ``redis-cli``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from urllib.parse import unquote, urlparse

import numpy as np

from inferis.client import AsyncClient, Client


def build_iris_model() -> tuple[bytes, object, np.ndarray]:
    """A random forest on the iris data, converted to ONNX (labels + probabilities)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    features, labels = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=25, max_depth=5, random_state=0)
    forest.fit(features, labels)
    onx = to_onnx(forest, features[:1], options={id(forest): {"zipmap": False}})
    return onx.SerializeToString(), forest, features


def _redis_cli(url: str, *args: str) -> str:
    parsed = urlparse(url)
    cmd = ["redis-cli", "-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379)]
    if parsed.password:
        cmd += ["-a", unquote(parsed.password), "--no-auth-warning"]
    return subprocess.run([*cmd, *args], check=True, capture_output=True, text=True).stdout


def run_demo(url: str) -> None:
    blob, forest, features = build_iris_model()
    samples = features[[0, 60, 120, 30, 90]]
    expected = forest.predict(samples)  # type: ignore[attr-defined]

    with Client(url) as client:
        stored = client.modelstore(
            "iris", "onnx", blob, format="onnx", tags={"trained": "sklearn RandomForest"}
        )
        print(f"stored model iris version {stored.version} (sha256 {stored.digest[:16]}...)")
        started = time.perf_counter()
        out = client.predict("iris", {"X": samples})
        elapsed_ms = (time.perf_counter() - started) * 1000
        print(f"\nPython SDK predict of {len(samples)} rows in {elapsed_ms:.2f} ms:")
        for row, label, probs in zip(samples, out["label"], out["probabilities"], strict=True):
            print(f"  features {row.tolist()} -> class {int(label)}  p={np.round(probs, 3)}")
        same = bool(np.array_equal(out["label"], expected))
        print(f"  same labels as scikit-learn in-process: {same}")

    async def many() -> int:
        async with AsyncClient(url) as aclient:
            rows = [features[i : i + 1] for i in range(len(features))]
            results = await asyncio.gather(*(aclient.predict("iris", {"X": r}) for r in rows))
            return sum(
                int(r["label"][0]) == int(e)
                for r, e in zip(results, forest.predict(features), strict=True)  # type: ignore[attr-defined]
            )

    started = time.perf_counter()
    agree = asyncio.run(many())
    elapsed = time.perf_counter() - started
    print(f"\nasyncio client: {len(features)} concurrent requests on one connection in "
          f"{elapsed * 1000:.0f} ms; {agree}/{len(features)} match scikit-learn")

    if shutil.which("redis-cli") is None:
        print("\n(redis-cli not on PATH: skipping the plain redis-cli run)")
        return
    print("\nThe same run with plain redis-cli:")
    values = [f"{v:.1f}" for v in samples[0]]
    steps = [
        ["FCALL", "TENSORSET", "1", "{inferis:0}:demo:x", "FLOAT", "1", "4", "VALUES", *values],
        ["FCALL", "MODELRUN", "3", "{inferis:0}:requests", "{inferis:0}:demo:x",
         "{inferis:0}:demo:label", "MODEL", "iris", "INPUTS", "1", "OUTPUTS", "1",
         "OUTNAMES", "label", "TIMEOUT", "5000"],
    ]
    for step in steps:
        print("  $ redis-cli " + " ".join(step))
        reply = _redis_cli(url, *step).strip().splitlines()
        print("    " + " | ".join(reply))
    done_key = reply[2]
    print(f"  $ redis-cli BLPOP {done_key} 5")
    popped = _redis_cli(url, "BLPOP", done_key, "5").strip().splitlines()
    print("    " + popped[-1])
    answer = json.loads(popped[-1])
    assert answer["status"] == "ok", answer
    step = ["FCALL", "TENSORGET", "1", "{inferis:0}:demo:label", "META", "VALUES"]
    print("  $ redis-cli " + " ".join(step))
    print("    " + " | ".join(_redis_cli(url, *step).strip().splitlines()))
