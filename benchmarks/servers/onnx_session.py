"""One onnxruntime session per model, configured the same way in every engine."""

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def config() -> dict[str, Any]:
    return json.loads(Path(os.environ["BENCH_CONFIG"]).read_text())


class OnnxModel:
    """The benchmark's ONNX file run with one intra-op thread (as inferis workers do)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.spec = spec
        self.session = ort.InferenceSession(
            spec["path"], options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i["name"] for i in spec["inputs"]]
        self.output_names = list(spec["outputs"])
        # Row widths, to split one concatenated 2-D array into the model's inputs.
        self.widths = [int(np.prod(i["shape"])) for i in spec["inputs"]]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, values, strict=True))

    def run_json(self, doc: dict[str, Any]) -> dict[str, np.ndarray]:
        """Inputs by name as nested lists (float32 models only)."""
        return self.run({n: np.asarray(doc[n], dtype=np.float32) for n in self.input_names})

    def run_joined(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One array holding every input side by side (engines that batch one argument)."""
        if len(self.input_names) == 1:
            return self.run({self.input_names[0]: x.astype(np.float32, copy=False)})
        feed, start = {}, 0
        for name, width in zip(self.input_names, self.widths, strict=True):
            feed[name] = np.ascontiguousarray(x[:, start : start + width], dtype=np.float32)
            start += width
        return self.run(feed)


def load_all() -> dict[str, OnnxModel]:
    return {spec["name"]: OnnxModel(spec) for spec in config()["models"]}
