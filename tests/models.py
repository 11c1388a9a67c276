"""Models the tests build on the spot (nothing is downloaded)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from inferis.engine.cli.demo import build_iris_model

OPSET = [helper.make_opsetid("", 17)]


@dataclass
class IrisModel:
    blob: bytes
    features: np.ndarray
    forest: object

    def reference(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The same ONNX model run in-process: what the engine must return."""
        session = ort.InferenceSession(self.blob, providers=["CPUExecutionProvider"])
        label, probabilities = session.run(None, {"X": x})
        return {"label": label, "probabilities": probabilities}


def iris_model() -> IrisModel:
    blob, forest, features = build_iris_model()
    return IrisModel(blob, features, forest)


def _save(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def scale_model(factor: float, width: int | None = 3) -> bytes:
    """Y = X * factor for X float32 [batch, width]."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "k"], ["Y"])],
        "scale",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, width])],
        initializer=[numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")],
    )
    return _save(graph)


def two_input_model() -> bytes:
    """S = A + B and P = A * B, float64 [?, ?]; named inputs and outputs."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["A", "B"], ["S"]), helper.make_node("Mul", ["A", "B"], ["P"])],
        "two",
        [
            helper.make_tensor_value_info("A", TensorProto.DOUBLE, [None, None]),
            helper.make_tensor_value_info("B", TensorProto.DOUBLE, [None, None]),
        ],
        [
            helper.make_tensor_value_info("S", TensorProto.DOUBLE, [None, None]),
            helper.make_tensor_value_info("P", TensorProto.DOUBLE, [None, None]),
        ],
    )
    return _save(graph)


def failing_model() -> bytes:
    """Reshapes X to [2, 2]: any input without exactly 4 elements fails in the backend."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "shape"], ["Y"])],
        "reshape",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 2])],
        initializer=[numpy_helper.from_array(np.array([2, 2], dtype=np.int64), "shape")],
    )
    return _save(graph)


def slow_model(steps: int = 120, size: int = 768) -> bytes:
    """A chain of ``steps`` [size x size] matrix products: seconds of CPU per run.

    Used to catch a worker mid-run. W is the identity, so Y == X exactly.
    """
    nodes = []
    previous = "X"
    for i in range(steps):
        out = "Y" if i == steps - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, "W"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [size, size])],
        initializer=[numpy_helper.from_array(np.eye(size, dtype=np.float32), "W")],
    )
    return _save(graph)


def mlp_model(seed: int = 0, features: int = 16, hidden: int = 64, classes: int = 4) -> bytes:
    """A two-layer perceptron with MatMul weights (something to quantize): X float32
    [batch, features] -> logits [batch, classes] and label int64 [batch] (their argmax)."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal((features, hidden)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "B1"),
        numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32), "W2"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W1"], ["h"]),
            helper.make_node("Add", ["h", "B1"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["a"]),
            helper.make_node("MatMul", ["a", "W2"], ["logits"]),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ],
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, features])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
        ],
        initializer=weights,
    )
    return _save(graph)
