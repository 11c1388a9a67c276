"""The compute floor: the same ONNX file in this process, one thread, batch 1."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from ..workloads import Workload
from .base import RunConfig, Series, Target


class InprocessTarget(Target):
    def __init__(self) -> None:
        super().__init__(
            name="inprocess",
            note="onnxruntime InferenceSession.run in the benchmark process, "
            "intra_op_num_threads=1, one call at a time (no transport, no batching)",
        )
        self._runs: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = {}

    async def start(self, workloads: list[Workload], config: RunConfig) -> None:
        self._runs = {w.name: w.reference() for w in workloads}
        self.settings = {"onnxruntime": ort.__version__, "intra_op_num_threads": 1}

    def series(self, workload: Workload) -> list[Series]:
        run = self._runs[workload.name]
        pool = workload.requests

        def call(i: int) -> object:
            return run(pool[i % len(pool)])

        return [Series("inprocess", blocking=call, concurrencies=(1,))]

    async def answer(self, workload: Workload, index: int) -> dict[str, np.ndarray] | None:
        return None  # it *is* the reference

    async def stop(self) -> None:
        self._runs = {}
