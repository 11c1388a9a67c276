"""A hand-written Starlette endpoint in one uvicorn process: the do-it-yourself baseline."""

from __future__ import annotations

import importlib.metadata
import sys
from typing import Any

import numpy as np

from ..procs import ServerProcess, free_port
from ..workloads import Workload
from .base import RunConfig
from .http import SERVERS, HttpTarget, server_env, write_server_config


class StarletteTarget(HttpTarget):
    def __init__(self) -> None:
        super().__init__(
            "starlette",
            "uvicorn[standard] (uvloop + httptools) + Starlette + onnxruntime, JSON in and "
            "out, no batching, as many uvicorn worker processes as the variant says; aiohttp "
            "load generator on uvloop (one session, connection limit = concurrency); every "
            "tensor travels in the request body",
        )

    @classmethod
    def variants(cls, config: RunConfig) -> list[dict[str, object]]:
        return [{"workers": n} for n in sorted({1, config.workers})]

    def path(self, workload: Workload) -> str:
        return f"/predict/{workload.name}"

    def body(self, workload: Workload, inputs: dict[str, np.ndarray]) -> Any:
        return {name: value.tolist() for name, value in inputs.items()}

    def decode(self, workload: Workload, doc: Any) -> dict[str, np.ndarray]:
        return {name: np.asarray(value) for name, value in doc.items()}

    async def launch(self, workloads: list[Workload], config: RunConfig) -> None:
        folder = config.work_dir / "starlette"
        port = free_port()
        workers = self.variant.get("workers", 1)
        cfg = write_server_config(folder, workloads, config, port=port, uvicorn_workers=workers)
        self.server = ServerProcess(
            [sys.executable, SERVERS / "starlette_app.py"], folder / "server.log",
            env=server_env(cfg),
        )
        self.server.start()
        self.base_url = f"http://127.0.0.1:{port}"
        await self.server.wait_http(self.base_url + "/health", config.start_timeout_s)
        self.settings = {
            "starlette": importlib.metadata.version("starlette"),
            "uvicorn": importlib.metadata.version("uvicorn"),
            "uvloop": importlib.metadata.version("uvloop"),
            "httptools": importlib.metadata.version("httptools"),
            "processes": workers,
            "batching": "none",
        }
