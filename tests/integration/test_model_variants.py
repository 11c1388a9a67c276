"""Faster variants of a stored model, made by the CLI and served by real workers:
graphs optimized at store time (ONNX Runtime, TorchScript) and int8 ONNX variants
stored only within the caller's bounds."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inferis.client import Client
from inferis.engine.cli.main import main

from .. import models

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)


def _reference(blob: bytes, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, {"X": x})


def test_store_optimize_records_the_level_and_answers_alike(
    client: Client, workers, redis_server, tmp_path: Path
) -> None:
    blob = models.mlp_model(features=32, hidden=128)
    path = tmp_path / "mlp.onnx"
    path.write_bytes(blob)
    model = ["model", "--redis", redis_server.url]
    assert main([*model, "store", "mlp", str(path), "--optimize"]) == 0
    assert main([*model, "store", "mlp", str(path), "--graph-optimization", "basic"]) == 0
    # (a graph without convolutions has no layout pass: "all" may equal "extended")
    assert main([*model, "store", "mlp-all", str(path), "--optimize", "all"]) == 0
    extended, online = client.modelget("mlp", 1), client.modelget("mlp", 2)
    everything = client.modelget("mlp-all")
    record = extended.extra["optimized"]
    assert record["level"] == "extended" and record["tool"].startswith("onnxruntime ")
    assert record["original_digest"] == hashlib.sha256(blob).hexdigest() != extended.digest
    assert "graph_optimization" not in extended.extra  # the CPU's layout pass, at load
    assert everything.extra["optimized"]["level"] == "all"
    assert everything.extra["graph_optimization"] == "disabled"  # nothing left to do
    assert online.extra == {"graph_optimization": "basic"}
    assert online.digest == hashlib.sha256(blob).hexdigest()

    x = np.random.default_rng(3).standard_normal((16, 32)).astype(np.float32)
    logits, label = _reference(blob, x)
    for name, version in (("mlp", 1), ("mlp", 2), ("mlp-all", 1)):
        out = client.predict(name, {"X": x}, version=version)
        np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-5)
        assert np.array_equal(out["label"], label)


def test_store_optimize_freezes_a_torchscript_module(
    client: Client, workers, redis_server, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    module = Net().eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    path = tmp_path / "net.pt"
    path.write_bytes(buffer.getvalue())
    assert main(["model", "--redis", redis_server.url, "store", "net", str(path),
                 "--backend", "torch", "--optimize"]) == 0
    info = client.modelget("net")
    assert info.extra["optimized"]["passes"] == ["freeze"]
    assert info.extra["optimize_for_inference"] is True
    assert info.extra["optimized"]["original_digest"] == hashlib.sha256(
        buffer.getvalue()).hexdigest()
    x = np.random.default_rng(4).standard_normal((5, 8)).astype(np.float32)
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    got = client.predict("net", {"x": x})["output_0"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_quantize_stores_within_bounds_and_refuses_beyond(
    client: Client, workers, redis_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = models.mlp_model(features=64, hidden=256)
    client.modelstore("mlp", "onnx", blob)
    rng = np.random.default_rng(5)
    sample = rng.standard_normal((128, 64)).astype(np.float32)
    client.tensorset("{inferis:0}:sample", sample)
    np.save(tmp_path / "sample.npy", sample)
    model = ["model", "--redis", redis_server.url]

    assert main([*model, "quantize", "mlp", "--sample", str(tmp_path / "sample.npy"),
                 "--max-diff", "1e-9"]) == 1
    refused = capsys.readouterr()
    assert "error: EACCURACY its outputs differ by up to" in refused.err
    assert "not stored" in refused.err and "on 128 sample rows" in refused.out
    assert client.modelversions("mlp") == [1]
    assert main([*model, "quantize", "mlp", "--sample", "{inferis:0}:sample",
                 "--min-agreement", "1.5"]) == 1
    assert "error: EARGS --min-agreement" in capsys.readouterr().err

    assert main([*model, "quantize", "mlp", "--sample", "X={inferis:0}:sample",
                 "--max-diff", "10", "--min-agreement", "0.8", "--by", "release"]) == 0
    assert "mlp version 2 stored" in capsys.readouterr().out
    original, variant = client.modelget("mlp", 1), client.modelget("mlp", 2)
    record = variant.extra["quantized"]
    assert (record["from_version"], record["from_digest"], record["weights"]) == (
        1, original.digest, "int8")
    assert record["sample_rows"] == 128 and record["max_abs_diff"] <= 10
    assert record["agreement"] >= 0.8 and variant.tags["variant"] == "int8"
    assert variant.size < original.size / 2  # int8 weights: about a quarter
    served = client.predict("mlp", {"X": sample})  # latest: the variant
    logits, label = _reference(blob, sample)
    assert np.abs(served["logits"] - logits).max() <= record["max_abs_diff"] + 1e-5
    assert (served["label"] == label).mean() == pytest.approx(record["agreement"])


def test_quantize_refuses_what_it_cannot_quantize(
    client: Client, redis_server, capsys: pytest.CaptureFixture[str]
) -> None:
    client.modelstore("scale", "onnx", models.scale_model(2.0))  # a Mul: no weights to take
    client.modelstore("script", "torch", b"def f(x: Tensor) -> Tensor:\n    return x\n",
                      format="torchscript-source", extra={"entry": "f"})
    model = ["model", "--redis", redis_server.url]
    assert main([*model, "quantize", "scale"]) == 1
    assert "error: EARGS nothing to quantize" in capsys.readouterr().err
    assert main([*model, "quantize", "script"]) == 1
    assert "supports ONNX only" in capsys.readouterr().err
    assert client.modelversions("scale") == [1] and client.modelversions("script") == [1]
