"""inferis itself: private redis-server + worker processes, one pipelined AsyncClient."""

from __future__ import annotations

import asyncio
import importlib.metadata

import numpy as np

from inferis.client import AsyncClient

from ..loadgen import Caller
from ..stack import WORKER_ARGS, InferisStack, request_inputs, store_workloads
from ..workloads import Workload
from .base import RunConfig, Series, Target


class InferisTarget(Target):
    def __init__(self) -> None:
        super().__init__(
            name="inferis",
            note="asyncio tasks on one AsyncClient (automatic pipelining) in the benchmark "
            "process; fraud's 1x256 reference vector is already in Redis and passed by key "
            "(Ref), only the 1x30 transaction travels",
        )
        self._stack: InferisStack | None = None
        self.client: AsyncClient | None = None
        self.url: str | None = None
        self._inputs: dict[str, list[dict[str, object]]] = {}

    @classmethod
    def variants(cls, config: RunConfig) -> list[dict[str, object]]:
        # --sandbox auto (the default) runs TorchScript and TensorFlow models in the
        # confined backend process; off runs them in the worker (trusted models).
        return [{"workers": n, "sandbox": sandbox} for n in sorted({1, config.workers})
                for sandbox in ("auto", "off")]

    async def start(self, workloads: list[Workload], config: RunConfig) -> None:
        workers = int(self.variant.get("workers", config.workers))  # type: ignore[arg-type]
        sandbox = str(self.variant.get("sandbox", "auto"))
        self._stack = InferisStack(config.work_dir / "inferis", workers,
                                   [*WORKER_ARGS, "--sandbox", sandbox])
        self.url = url = await asyncio.to_thread(self._stack.start, config.start_timeout_s)
        ttl = {"ttl_ms": config.inferis_ttl_ms} if config.inferis_ttl_ms else {}
        self.client = AsyncClient(url, timeout_ms=int(config.request_timeout_s * 1000), **ttl)
        await store_workloads(self.client, workloads, config.inferis_batch)
        self._inputs = {w.name: request_inputs(w) for w in workloads}
        size, delay = config.inferis_batch
        self.settings = {
            "version": importlib.metadata.version("inferis"),
            "workers": workers,
            "sandbox": sandbox,
            "batch": {"max_batch_size": size, "max_queue_delay_us": delay},
            "client_ttl_ms": self.client.ttl_ms,
            "redis": "private redis-server, appendonly yes, appendfsync everysec",
        }

    def series(self, workload: Workload) -> list[Series]:
        client, pool, name = self.client, self._inputs[workload.name], workload.name
        assert client is not None

        async def open_(concurrency: int) -> Caller:
            async def call(i: int) -> object:
                return await client.predict(name, pool[i % len(pool)])

            return call

        return [Series(self.label, open_)]

    async def answer(self, workload: Workload, index: int) -> dict[str, np.ndarray] | None:
        assert self.client is not None
        pool = self._inputs[workload.name]
        return await self.client.predict(workload.name, pool[index])

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self._stack is not None:
            await asyncio.to_thread(self._stack.stop)
            self._stack = None
