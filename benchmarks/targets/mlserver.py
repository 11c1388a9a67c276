"""MLServer (Seldon) with a custom ONNX runtime, adaptive batching and parallel workers."""

from __future__ import annotations

import json
import shutil
from typing import Any

import numpy as np

from ..procs import ServerProcess, free_port
from ..workloads import Workload
from .base import RunConfig
from .http import SERVERS, HttpTarget, engine_venv, server_env, write_server_config

_DATATYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}


class MLServerTarget(HttpTarget):
    def __init__(self) -> None:
        super().__init__(
            "mlserver",
            "mlserver start on a model repository: a custom MLModel runtime calling "
            "onnxruntime, adaptive batching (max_batch_size, max_batch_time), "
            "parallel_workers inference processes; V2 inference protocol JSON over HTTP, "
            "aiohttp load generator; every tensor travels in the request body",
        )

    @classmethod
    def variants(cls, config: RunConfig) -> list[dict[str, object]]:
        # MLServer's documented knobs: inference in the main process (0) or in N
        # parallel workers; adaptive batching on or off (max_batch_size 1).
        return [
            {"parallel_workers": n, "adaptive_batching": b}
            for n in sorted({0, config.workers}) for b in ("on", "off")
        ]

    def path(self, workload: Workload) -> str:
        return f"/v2/models/{workload.name}/infer"

    def body(self, workload: Workload, inputs: dict[str, np.ndarray]) -> Any:
        return {"inputs": [
            {"name": n, "shape": list(v.shape), "datatype": _DATATYPES[str(v.dtype)],
             "data": v.ravel().tolist()}
            for n, v in inputs.items()
        ]}

    def decode(self, workload: Workload, doc: Any) -> dict[str, np.ndarray]:
        return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}

    async def launch(self, workloads: list[Workload], config: RunConfig) -> None:
        venv = await engine_venv("mlserver")
        folder = config.work_dir / "mlserver"
        shutil.rmtree(folder, ignore_errors=True)
        port = free_port()
        cfg = write_server_config(folder, workloads, config, port=port)
        size, wait_ms = config.engine_batch
        if self.variant.get("adaptive_batching") == "off":
            size = 1
        workers = int(self.variant.get("parallel_workers", config.workers))  # type: ignore[arg-type]
        (folder / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
            "metrics_port": free_port(), "parallel_workers": workers,
            "debug": False,
        }))
        for w in workloads:
            model_dir = folder / "models" / w.name
            model_dir.mkdir(parents=True)
            shutil.copy(SERVERS / "mlserver_runtime.py", model_dir / "mlserver_runtime.py")
            (model_dir / "model-settings.json").write_text(json.dumps({
                "name": w.name,
                "implementation": "mlserver_runtime.OnnxRuntime",
                "max_batch_size": size,
                "max_batch_time": wait_ms / 1000,
            }))
        self.server = ServerProcess(
            [venv.bin("mlserver"), "start", folder], folder / "server.log", cwd=folder,
            env=server_env(cfg),
        )
        self.server.start()
        self.base_url = f"http://127.0.0.1:{port}"
        for w in workloads:
            await self.server.wait_http(
                f"{self.base_url}/v2/models/{w.name}/ready", config.start_timeout_s
            )
        self.settings = {
            **venv.installed(), "parallel_workers": workers,
            "max_batch_size": size, "max_batch_time_s": wait_ms / 1000,
        }
