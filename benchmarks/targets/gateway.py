"""inferis behind its Open Inference Protocol gateway: the same V2 JSON bodies and
aiohttp load generator as MLServer, against ``inferis gateway`` (uvicorn) in
front of a private redis-server and worker processes."""

from __future__ import annotations

import asyncio
import importlib.metadata
import sys

from inferis.client import AsyncClient

from ..procs import ServerProcess, free_port
from ..stack import InferisStack
from ..workloads import Workload
from .base import RunConfig
from .mlserver import MLServerTarget


class GatewayTarget(MLServerTarget):
    def __init__(self) -> None:
        super().__init__()
        self.name = "inferis-gateway"
        self.note = ("inferis gateway (Open Inference Protocol V2 REST on uvicorn with uvloop "
                     "and httptools) over a private redis-server and inferis workers; the same "
                     "V2 JSON bodies and aiohttp load generator as MLServer; every tensor "
                     "travels in the request body")
        self._stack: InferisStack | None = None

    @classmethod
    def variants(cls, config: RunConfig) -> list[dict[str, object]]:
        # The gateway's own knob (uvicorn processes) over the workers' (processes).
        return [{"gateway_workers": g, "workers": w}
                for g in sorted({1, config.workers}) for w in sorted({1, config.workers})]

    async def launch(self, workloads: list[Workload], config: RunConfig) -> None:
        workers = int(self.variant.get("workers", config.workers))  # type: ignore[arg-type]
        gateways = int(self.variant.get("gateway_workers", 1))  # type: ignore[arg-type]
        self._stack = InferisStack(config.work_dir / "inferis-gateway", workers)
        url = await asyncio.to_thread(self._stack.start, config.start_timeout_s)
        async with AsyncClient(url) as client:
            for w in workloads:
                size, delay = config.inferis_batch
                await client.modelstore(w.name, "onnx", w.onnx, format="onnx",
                                        batch=(size, delay))
        port = free_port()
        self.server = ServerProcess(
            [sys.executable, "-m", "inferis.engine", "gateway", "--redis", url,
             "--port", str(port), "--workers", str(gateways), "--log-level", "WARNING"],
            config.work_dir / "inferis-gateway" / "gateway.log",
        )
        self.server.start()
        self.base_url = f"http://127.0.0.1:{port}"
        for w in workloads:
            await self.server.wait_http(f"{self.base_url}/v2/models/{w.name}/ready",
                                        config.start_timeout_s)
        self.settings = {"version": importlib.metadata.version("inferis"),
                         "gateway_workers": gateways, "workers": workers,
                         "batch": {"max_batch_size": config.inferis_batch[0],
                                   "max_queue_delay_us": config.inferis_batch[1]}}

    async def stop(self) -> None:
        await super().stop()
        if self._stack is not None:
            await asyncio.to_thread(self._stack.stop)
            self._stack = None
