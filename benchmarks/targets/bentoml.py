"""BentoML: one service, a batchable API per model (adaptive batching), N workers."""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np

from ..procs import ServerProcess, free_port
from ..workloads import Workload
from .base import RunConfig
from .http import SERVERS, HttpTarget, engine_venv, server_env, write_server_config


class BentoMLTarget(HttpTarget):
    def __init__(self) -> None:
        super().__init__(
            "bentoml",
            "bentoml serve of a @bentoml.service with one @bentoml.api(batchable=True) per "
            "model (adaptive batching), workers = inferis workers; JSON over HTTP, aiohttp "
            "load generator; every tensor travels in the request body (a model's inputs side "
            "by side in one array, since a batchable API takes one argument); the reply "
            "carries the model's main output only",
        )

    @classmethod
    def variants(cls, config: RunConfig) -> list[dict[str, object]]:
        return [
            {"workers": n, "batchable": b}
            for n in sorted({1, config.workers}) for b in (True, False)
        ]

    def path(self, workload: Workload) -> str:
        return f"/{workload.name}"

    def body(self, workload: Workload, inputs: dict[str, np.ndarray]) -> Any:
        arrays = [inputs[n] for n in workload.input_names]
        joined = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)
        return {"x": joined.tolist()}

    def returned_outputs(self, workload: Workload) -> list[str]:
        return [workload.primary_output]

    def decode(self, workload: Workload, doc: Any) -> dict[str, np.ndarray]:
        return {workload.primary_output: np.asarray(doc)}

    async def launch(self, workloads: list[Workload], config: RunConfig) -> None:
        venv = await engine_venv("bentoml")
        folder = config.work_dir / "bentoml"
        shutil.rmtree(folder, ignore_errors=True)
        port = free_port()
        workers = int(self.variant.get("workers", config.workers))  # type: ignore[arg-type]
        batchable = bool(self.variant.get("batchable", True))
        cfg = write_server_config(
            folder, workloads, config, port=port, workers=workers, batchable=batchable
        )
        env = {**server_env(cfg), "BENTOML_HOME": str(folder / "home"),
               "BENTOML_DO_NOT_TRACK": "True"}
        self.server = ServerProcess(
            [venv.bin("bentoml"), "serve", "bentoml_service:Bench", "--working-dir", SERVERS,
             "--host", "127.0.0.1", "--port", str(port)],
            folder / "server.log", cwd=folder, env=env,
        )
        self.server.start()
        self.base_url = f"http://127.0.0.1:{port}"
        await self.server.wait_http(self.base_url + "/readyz", config.start_timeout_s)
        self.settings = {
            **venv.installed(), "workers": workers, "batchable": batchable,
            "max_batch_size": config.engine_batch[0] if batchable else 1,
            "max_latency_ms": "BentoML default",
        }
