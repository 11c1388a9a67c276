"""The PyTorch backend end to end: TorchScript archives, torch.export programs and
TorchScript source, run by real workers and compared with torch run in-process."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from torch import nn

from inferis.client import BackendError, Client, InputError, UnsafeModelError

# TorchScript is deprecated in favour of torch.export, but still supported and served.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)

# Worker results must equal the module's own output on the same CPU kernels;
# the worker may use another thread count, which can reorder float sums.
TIGHT = {"rtol": 1e-6, "atol": 1e-6}


def _script_bytes(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def _reference(module: nn.Module, *arrays: np.ndarray) -> object:
    with torch.inference_mode():
        return module(*(torch.from_numpy(a.copy()) for a in arrays))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).eval()


class TwoHeads(nn.Module):
    """Two inputs; returns (scores, argmax label)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.proj = nn.Linear(5, 4)

    def forward(
        self, features: torch.Tensor, offset: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.proj(features) + offset
        return scores, scores.argmax(dim=1)


class Passthrough(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class Flip(nn.Module):
    """bfloat16 arithmetic and a bool output."""

    def forward(self, x: torch.Tensor, flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, ~flags


class ToComplex(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.complex64)


class Checked(nn.Module):
    """Refuses inputs without 4 features inside forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[1] == 4, "x must have 4 features")
        return x.sum(dim=1)


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.body(x), dim=1)


def test_scripted_mlp_matches_the_module(client: Client, start_workers) -> None:
    start_workers(1)
    mlp = _mlp()
    client.modelstore("mlp", "torch", _script_bytes(mlp), format="torchscript")
    x = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    out = client.predict("mlp", [x])
    assert list(out) == ["output_0"]
    assert out["output_0"].dtype == np.float32
    # eval mode: dropout is off, so the result is deterministic
    np.testing.assert_allclose(out["output_0"], _reference(mlp, x).numpy(), **TIGHT)
    named = client.predict("mlp", {"input": x})  # nn.Sequential's forward argument
    np.testing.assert_array_equal(named["output_0"], out["output_0"])
    info = client.modelget("mlp")
    assert (info.backend, info.format) == ("torch", "torchscript")
    # a GPU preference on a CPU-only worker runs on CPU (with a warning), not an error
    client.modelstore("mlp-gpu", "torch", _script_bytes(mlp), device="GPU:0")
    np.testing.assert_array_equal(client.predict("mlp-gpu", [x])["output_0"], out["output_0"])


def test_exported_program_reports_its_signature(client: Client, start_workers) -> None:
    start_workers(1)
    model = Classifier().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.randn(2, 4),), dynamic_shapes={"x": {0: batch}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    client.modelstore("clf", "torch", buffer.getvalue(), format="pt2")
    assert client.modelget("clf").format == "pt2"
    rng = np.random.default_rng(1)
    for rows in (3, 7):
        x = rng.standard_normal((rows, 4)).astype(np.float32)
        out = client.predict("clf", {"x": x})["output_0"]
        assert out.shape == (rows, 3)
        with torch.inference_mode():
            expected = program.module()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out, expected, **TIGHT)
        np.testing.assert_allclose(out, _reference(model, x).numpy(), **TIGHT)
    with pytest.raises(InputError, match=r"input x: dimension 1 must be 4 \(x: float32\[\?,4\]\)"):
        client.predict("clf", [np.zeros((2, 5), np.float32)])
    with pytest.raises(InputError, match="input x: expected dtype float32, got float64"):
        client.predict("clf", [np.zeros((2, 4))])


def test_two_inputs_and_a_tuple_of_outputs(client: Client, start_workers) -> None:
    start_workers(1)
    model = TwoHeads().eval()
    blob = _script_bytes(model)
    client.modelstore("heads", "torch", blob)  # torchscript is the default format
    rng = np.random.default_rng(2)
    features = rng.standard_normal((9, 5)).astype(np.float32)
    offset = rng.standard_normal(4).astype(np.float32)
    scores, label = _reference(model, features, offset)
    out = client.predict("heads", {"offset": offset, "features": features})
    assert out["output_1"].dtype == np.int64
    np.testing.assert_array_equal(out["output_1"], label.numpy())
    np.testing.assert_allclose(out["output_0"], scores.numpy(), **TIGHT)
    # declared OUTPUT names replace output_0, output_1
    client.modelstore(
        "heads-named", "torch", blob,
        outputs=[
            {"name": "scores", "dtype": "float32", "shape": [-1, 4]},
            {"name": "label", "dtype": "int64", "shape": [-1]},
        ],
    )
    named = client.predict("heads-named", [features, offset])
    assert sorted(named) == ["label", "scores"]
    np.testing.assert_array_equal(named["label"], label.numpy())


SCRIPT = """
def normalise(x: Tensor) -> Tensor:
    return (x - x.mean(dim=0)) / x.std(dim=0)

def decide(scores: Tensor, threshold: float = 0.6):
    top = scores.max(dim=1)
    return top.indices, top.values > threshold
"""


def test_torchscript_source_entry_points(client: Client, start_workers) -> None:
    start_workers(1)
    blob = SCRIPT.encode()
    client.modelstore("normalise", "torch", blob, format="torchscript-source",
                      extra={"entry": "normalise"})
    client.modelstore("decide", "torch", blob, format="torchscript-source",
                      extra={"entry": "decide"})
    x = np.random.default_rng(3).standard_normal((10, 3)) * 5 + 2
    normalised = client.predict("normalise", {"x": x})["output_0"]
    expected = (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)  # torch.std is unbiased
    np.testing.assert_allclose(normalised, expected, rtol=1e-12, atol=1e-12)
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.05, 0.05, 0.9]], np.float32)
    out = client.predict("decide", [scores])
    np.testing.assert_array_equal(out["output_0"], scores.argmax(axis=1))
    np.testing.assert_array_equal(out["output_1"], scores.max(axis=1) > 0.6)
    client.modelstore("nope", "torch", blob, format="torchscript-source", extra={"entry": "top"})
    with pytest.raises(BackendError, match=r"no function 'top'; it defines: decide, normalise"):
        client.predict("nope", [scores])
    client.modelstore("unnamed", "torch", blob, format="torchscript-source")
    with pytest.raises(BackendError, match=r'META \{"entry".*defines: decide, normalise'):
        client.predict("unnamed", [scores])


def test_declared_inputs_check_a_torchscript_model(client: Client, start_workers) -> None:
    start_workers(1)
    mlp = _mlp()
    client.modelstore(
        "mlp", "torch", _script_bytes(mlp),
        inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 8]}],
    )
    with pytest.raises(InputError, match=r"input input: dimension 1 must be 8"):
        client.predict("mlp", [np.zeros((2, 7), np.float32)])
    with pytest.raises(InputError, match="input input: expected dtype float32, got float64"):
        client.predict("mlp", [np.zeros((2, 8))])
    x = np.ones((1, 8), np.float32)
    np.testing.assert_allclose(client.predict("mlp", [x])["output_0"],
                               _reference(mlp, x).numpy(), **TIGHT)


def test_dtypes_round_trip(client: Client, start_workers) -> None:
    start_workers(1)
    client.modelstore("flip", "torch", _script_bytes(Flip()))
    x = np.array([[1.5, -0.0078125], [3.0e38, 0.1]], ml_dtypes.bfloat16)
    flags = np.array([True, False, True])
    out = client.predict("flip", [x, flags])
    assert out["output_0"].dtype == ml_dtypes.bfloat16
    expected = Flip()(torch.tensor(x.astype(np.float32)).to(torch.bfloat16), torch.tensor(flags))
    np.testing.assert_array_equal(
        out["output_0"].view(np.uint16), expected[0].view(torch.int16).numpy().view(np.uint16)
    )
    np.testing.assert_array_equal(out["output_1"], ~flags)

    client.modelstore("same", "torch", _script_bytes(Passthrough()))
    rng = np.random.default_rng(4)
    for dtype in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                  "uint16", "uint32", "uint64"):
        floats = dtype.startswith("float")
        value = (rng.standard_normal((2, 3)) if floats else rng.integers(0, 100, (2, 3))).astype(
            dtype
        )
        got = client.predict("same", [value])["output_0"]
        assert got.dtype == value.dtype, dtype
        np.testing.assert_array_equal(got, value)
    with pytest.raises(InputError, match="input x is a str tensor; torch has no string tensors"):
        client.predict("same", [np.array(["a", "b"], dtype=object)])

    client.modelstore("complex", "torch", _script_bytes(ToComplex()))
    with pytest.raises(BackendError, match=r"output output_0 has dtype torch\.complex64"):
        client.predict("complex", [np.ones(2, np.float32)])


def test_failures_surface_and_the_worker_keeps_serving(client: Client, start_workers) -> None:
    start_workers(1)
    client.modelstore("checked", "torch", _script_bytes(Checked()))
    with pytest.raises(BackendError, match=r"checked v1 failed: .*x must have 4 features"):
        client.predict("checked", [np.ones((2, 5), np.float32)])
    good = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(client.predict("checked", [good])["output_0"], good.sum(axis=1))

    client.modelstore("corrupt", "torch", b"not a model at all")
    with pytest.raises(BackendError, match=r"cannot load model corrupt v1 .*not a PyTorch archive"):
        client.predict("corrupt", [good])
    program = torch.export.export(Checked(), (torch.ones(2, 4),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    client.modelstore("mislabelled", "torch", buffer.getvalue(), format="torchscript")
    with pytest.raises(BackendError, match="store it with FORMAT pt2"):
        client.predict("mislabelled", [good])
    np.testing.assert_array_equal(client.predict("checked", [good])["output_0"], good.sum(axis=1))


class _OpensAFile:
    """Unpickling this calls open(path, "w"): proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _rewrite_pt2(blob: bytes, replace: dict[str, bytes], add: dict[str, bytes]) -> bytes:
    """The archive with entries (matched by name suffix) replaced and new ones added."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w") as dst:
        top = src.namelist()[0].split("/", 1)[0]  # every entry sits in one top folder
        for item in src.infolist():
            data = src.read(item.filename)
            for suffix, new in replace.items():
                if item.filename.endswith(suffix):
                    data = new
            dst.writestr(item, data)
        for name, data in add.items():
            dst.writestr(f"{top}/{name}", data)
    return out.getvalue()


def test_pt2_archives_cannot_run_code_on_load(
    client: Client, start_workers, tmp_path: Path
) -> None:
    start_workers(1)
    program = torch.export.export(Classifier().eval(), (torch.randn(2, 4),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    marker = tmp_path / "code-ran"
    payload = io.BytesIO()
    torch.save(_OpensAFile(marker), payload)
    evil = _rewrite_pt2(buffer.getvalue(), {"sample_inputs/model.pt": payload.getvalue()}, {})
    client.modelstore("evil", "torch", evil, format="pt2")
    with pytest.raises(UnsafeModelError, match=r"pickled objects beyond tensors \(io\.open\)"):
        client.predict("evil", [np.zeros((1, 4), np.float32)])
    assert not marker.exists()
    # torch.export.load itself does run it (then fails on the result, or in its own
    # logging under pytest): the refusal above is what protects the worker
    with pytest.raises((AssertionError, TypeError)):
        torch.export.load(io.BytesIO(evil))
    assert marker.exists()

    native = _rewrite_pt2(buffer.getvalue(), {}, {"data/aotinductor/model/x.so": b"\0"})
    client.modelstore("native", "torch", native, format="pt2")
    with pytest.raises(UnsafeModelError, match="AOTInductor-compiled native code"):
        client.predict("native", [np.zeros((1, 4), np.float32)])


PIPELINE_SCRIPT = """
def prepare(x: Tensor) -> Tensor:
    return ((x - 5.0) / 2.0).float()

def decide(probabilities: Tensor) -> Tuple[Tensor, Tensor]:
    top = probabilities.max(dim=1)
    return top.indices, top.values
"""


def test_script_model_script_pipeline_in_one_request(client: Client, start_workers, iris) -> None:
    """Pre-processing script -> ONNX model -> post-processing script, no client round trips."""
    start_workers(1)
    blob = PIPELINE_SCRIPT.encode()
    client.modelstore("prepare", "torch", blob, format="torchscript-source",
                      extra={"entry": "prepare"})
    client.modelstore("decide", "torch", blob, format="torchscript-source",
                      extra={"entry": "decide"})
    client.modelstore("iris", "onnx", iris.blob)
    client.pipelinestore(
        "iris-scored",
        [
            {"model": "prepare", "inputs": ["raw"], "outputs": ["X"]},
            {"model": "iris", "inputs": {"X": "X"}, "outputs": {"probabilities": "p"}},
            {"model": "decide", "inputs": ["p"], "outputs": ["label", "confidence"]},
        ],
        inputs=["raw"], outputs=["label", "confidence"],
    )
    raw = iris.features.astype(np.float64) * 2.0 + 5.0  # what the client has: raw units
    out = client.predict("iris-scored", {"raw": raw})
    expected = iris.reference(((raw - 5.0) / 2.0).astype(np.float32))["probabilities"]
    np.testing.assert_array_equal(out["label"], expected.argmax(axis=1))
    np.testing.assert_allclose(out["confidence"], expected.max(axis=1), rtol=1e-6)
