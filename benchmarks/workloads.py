"""The three workloads, built on the spot (never downloaded) and exported to ONNX.

Each workload carries its ONNX bytes, a pool of ready request inputs, and the
in-process onnxruntime reference used to check every system's answers.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WORKLOADS = ("fraud", "cnn", "forest")
# Distinct reference vectors kept in Redis for the fraud workload (by key).
FRAUD_REFS = 512
# Request inputs prepared ahead, cycled by the load generator so it spends
# its time sending, not generating data.
POOL_SIZE = 64


@dataclass
class Workload:
    name: str
    description: str
    onnx: bytes
    input_names: list[str]
    output_names: list[str]
    # One request each: input name -> array with a batch dimension of 1.
    requests: list[dict[str, np.ndarray]]
    # For "fraud": which stored reference vector each request uses.
    ref_index: list[int] = field(default_factory=list)
    refs: np.ndarray | None = None
    primary_output: str = ""
    # Inputs inferis reads from Redis by key instead of receiving them (fraud: "ref").
    stored_inputs: tuple[str, ...] = ()
    # The torch module the ONNX file was exported from (fraud, cnn), for TorchScript rows.
    module: object | None = None

    def request_bytes(self) -> int:
        """Raw tensor bytes of one request (all inputs, by value)."""
        return sum(int(a.nbytes) for a in self.requests[0].values())

    def sent_bytes(self) -> int:
        """Tensor bytes an inferis client sends: the inputs not already stored."""
        first = self.requests[0]
        return sum(int(a.nbytes) for n, a in first.items() if n not in self.stored_inputs)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.onnx"
        path.write_bytes(self.onnx)
        return path

    def reference(self) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """onnxruntime in this process, one thread: the expected answers."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(self.onnx, options, providers=["CPUExecutionProvider"])
        names = self.output_names

        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(names, session.run(names, inputs), strict=True))

        return run


def _torch_to_onnx(model: object, args: tuple[object, ...], inputs: list[str],
                   outputs: list[str]) -> bytes:
    import torch

    buffer = io.BytesIO()
    axes = {n: {0: "batch"} for n in [*inputs, *outputs]}
    # The TorchScript exporter: fast, and its output needs no onnxscript at load.
    torch.onnx.export(
        model, args, buffer, input_names=inputs, output_names=outputs,
        dynamic_axes=axes, opset_version=17, dynamo=False,
    )
    return buffer.getvalue()


def build_fraud(rng: np.random.Generator) -> Workload:
    """An MLP over a 30-feature transaction and a 256-float reference vector."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Fraud(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(30 + 256, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                nn.Linear(64, 1), nn.Sigmoid(),
            )

        def forward(self, txn: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            return self.net(torch.cat([txn, ref], dim=1))

    model = Fraud().eval()
    blob = _torch_to_onnx(
        model, (torch.zeros(1, 30), torch.zeros(1, 256)), ["txn", "ref"], ["prob"]
    )
    refs = rng.standard_normal((FRAUD_REFS, 256)).astype(np.float32)
    index = [int(i) for i in rng.integers(0, FRAUD_REFS, POOL_SIZE)]
    requests = [
        {"txn": rng.standard_normal((1, 30)).astype(np.float32), "ref": refs[i : i + 1].copy()}
        for i in index
    ]
    return Workload(
        "fraud", "MLP: 1x30 transaction + 1x256 reference vector -> probability (torch)",
        blob, ["txn", "ref"], ["prob"], requests, index, refs, "prob", ("ref",), model,
    )


def build_cnn(rng: np.random.Generator) -> Workload:
    """A small CNN on 1x3x64x64 images, 10 classes."""
    import torch
    from torch import nn

    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, 10),
    ).eval()
    blob = _torch_to_onnx(model, (torch.zeros(1, 3, 64, 64),), ["image"], ["logits"])
    requests = [
        {"image": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)}
        for _ in range(POOL_SIZE)
    ]
    return Workload(
        "cnn", "CNN: 1x3x64x64 image -> 10 logits (torch)",
        blob, ["image"], ["logits"], requests, primary_output="logits", module=model,
    )


def build_forest(rng: np.random.Generator) -> Workload:
    """A scikit-learn random forest (100 trees, depth 8, 20 features) via skl2onnx."""
    from skl2onnx import to_onnx
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    features, labels = make_classification(
        n_samples=4000, n_features=20, n_informative=10, n_classes=3, random_state=0
    )
    features = features.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1)
    forest.fit(features, labels)
    onx = to_onnx(forest, features[:1], options={id(forest): {"zipmap": False}})
    input_name = onx.graph.input[0].name
    outputs = [o.name for o in onx.graph.output]
    rows = rng.integers(0, len(features), POOL_SIZE)
    requests = [{input_name: features[i : i + 1].copy()} for i in rows]
    return Workload(
        "forest", "RandomForest: 100 trees, depth 8, 1x20 features -> label + probabilities "
        "(scikit-learn, skl2onnx)",
        onx.SerializeToString(), [input_name], outputs, requests,
        primary_output="probabilities",
    )


_BUILDERS: dict[str, Callable[[np.random.Generator], Workload]] = {
    "fraud": build_fraud,
    "cnn": build_cnn,
    "forest": build_forest,
}


def build(names: list[str], seed: int = 7) -> list[Workload]:
    unknown = [n for n in names if n not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    return [_BUILDERS[n](np.random.default_rng(seed + i)) for i, n in enumerate(names)]


def matches(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> str | None:
    """None when ``got`` agrees with ``expected`` (integers exact, floats close)."""
    for name, want in expected.items():
        if name not in got:
            return f"output {name} missing (got {sorted(got)})"
        have = np.asarray(got[name])
        if have.size != want.size:
            return f"output {name}: {have.size} values, expected {want.size}"
        have = have.reshape(want.shape)
        if np.issubdtype(want.dtype, np.integer):
            if not np.array_equal(have.astype(want.dtype), want):
                return f"output {name}: {have.ravel()[:4]} != {want.ravel()[:4]}"
        elif not np.allclose(have, want, rtol=1e-4, atol=1e-5):
            return f"output {name}: {have.ravel()[:4]} != {want.ravel()[:4]}"
    return None
