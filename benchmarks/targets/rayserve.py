"""Ray Serve: a deployment per model with @serve.batch, N replicas each."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..procs import ServerProcess, free_port
from ..workloads import Workload
from .base import RunConfig
from .http import SERVERS, HttpTarget, engine_venv, server_env, write_server_config


class RayServeTarget(HttpTarget):
    def __init__(self) -> None:
        super().__init__(
            "rayserve",
            "a local Ray cluster with Serve: one deployment per model, num_replicas = "
            "inferis workers, @serve.batch(max_batch_size, batch_wait_timeout_s); JSON over "
            "HTTP through the Serve proxy, aiohttp load generator; every tensor travels in "
            "the request body",
        )

    _tmp: Path | None = None

    @classmethod
    def variants(cls, config: RunConfig) -> list[dict[str, object]]:
        return [{"serve_batch": b} for b in (True, False)]

    def path(self, workload: Workload) -> str:
        return f"/{workload.name}"

    def body(self, workload: Workload, inputs: dict[str, np.ndarray]) -> Any:
        return {name: value.tolist() for name, value in inputs.items()}

    def decode(self, workload: Workload, doc: Any) -> dict[str, np.ndarray]:
        return {name: np.asarray(value) for name, value in doc.items()}

    async def launch(self, workloads: list[Workload], config: RunConfig) -> None:
        venv = await engine_venv("rayserve")
        folder = config.work_dir / "rayserve"
        shutil.rmtree(folder, ignore_errors=True)
        port = free_port()
        ready = folder / "ready"
        batch = bool(self.variant.get("serve_batch", True))
        cfg = write_server_config(
            folder, workloads, config, port=port, ready_file=str(ready), serve_batch=batch
        )
        # Ray's session files (unix sockets among them) in a short temp dir of our
        # own: socket paths have a length limit, and /tmp/ray may belong to others.
        self._tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
        env = {**server_env(cfg), "RAY_TMPDIR": str(self._tmp),
               "RAY_USAGE_STATS_ENABLED": "0"}
        self.server = ServerProcess(
            [venv.python, SERVERS / "rayserve_app.py"], folder / "server.log", cwd=folder, env=env,
        )
        self.server.start()
        self.base_url = f"http://127.0.0.1:{port}"
        await self.server.wait_file(ready, config.start_timeout_s)
        size, wait_ms = config.engine_batch
        self.settings = {
            **venv.installed(), "num_replicas": config.workers, "serve_batch": batch,
            "max_batch_size": size if batch else 1, "batch_wait_timeout_s": wait_ms / 1000,
            "max_ongoing_requests": size if batch else 5,
        }

    async def stop(self) -> None:
        await super().stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
