"""A private inferis for the benchmarks: redis-server (AOF on) plus worker processes."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import psutil
import redis

from inferis.client import AsyncClient, Ref
from inferis.client.protocol import keys as K
from inferis.client.protocol.defaults import GROUP
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.engine.local.supervisor import WorkerPool
from inferis.lua import ensure_library

from .workloads import Workload

WORKER_ARGS = ("--log-level", "WARNING")


def ref_key(index: int) -> str:
    """Where fraud reference vector ``index`` lives: under partition 0's hash tag,
    so MODELRUN reads it in the same slot as the request (the colocation case)."""
    return f"{K.partition_tag(0)}:ref:{index}"


class InferisStack:
    def __init__(
        self, data_dir: Path, workers: int, worker_args: Sequence[str] = WORKER_ARGS
    ) -> None:
        self.data_dir = data_dir
        self.workers = workers
        self.worker_args = list(worker_args)
        self.server: EmbeddedRedis | None = None
        self.pool: WorkerPool | None = None

    @property
    def url(self) -> str:
        assert self.server is not None, "stack not started"
        return self.server.url

    def start(self, timeout_s: float = 120.0) -> str:
        # A fresh data dir: an AOF left by an earlier run would replay old keys.
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.server = EmbeddedRedis(self.data_dir)
        self.server.start()
        conn = redis.Redis.from_url(self.server.url)
        try:
            ensure_library(conn)
            self.pool = WorkerPool(self.server.url, self.workers, self.worker_args)
            self.pool.start()
            self._wait_for_workers(conn, timeout_s)
        finally:
            conn.close()
        return self.server.url

    def _wait_for_workers(self, conn: redis.Redis, timeout_s: float) -> None:
        """Workers join the request stream's group once their imports are done."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                joined = len(conn.xinfo_consumers(K.request_stream(0), GROUP))
            except redis.ResponseError:  # no stream or group yet
                joined = 0
            if joined >= self.workers:
                return
            assert self.pool is not None
            for process in self.pool.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"worker pid {process.pid} exited with {process.returncode}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.workers} workers did not join within {timeout_s:.0f}s")

    def worker_processes(self) -> list[psutil.Process]:
        assert self.pool is not None
        return [psutil.Process(p.pid) for p in self.pool.processes if p.poll() is None]

    def redis_process(self) -> psutil.Process:
        assert self.server is not None and self.server.process is not None
        return psutil.Process(self.server.process.pid)

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.stop(grace_s=10)
            self.pool = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        # The AOF of a benchmark run can reach gigabytes; nothing in it is needed later.
        shutil.rmtree(self.data_dir, ignore_errors=True)


async def store_workloads(
    client: AsyncClient, workloads: Sequence[Workload], batch: tuple[int, int]
) -> None:
    """Store each model (batching settings per version) and the fraud reference vectors."""
    for workload in workloads:
        await client.modelstore(workload.name, "onnx", workload.onnx, format="onnx", batch=batch)
        if workload.refs is not None:
            refs = workload.refs
            await _gather_in_chunks(
                [client.tensorset(ref_key(i), refs[i : i + 1]) for i in range(len(refs))]
            )


async def _gather_in_chunks(coros: list[Coroutine[Any, Any, Any]], chunk: int = 128) -> None:
    for start in range(0, len(coros), chunk):
        await asyncio.gather(*coros[start : start + chunk])


def request_inputs(workload: Workload) -> list[dict[str, object]]:
    """Per request: arrays by value, except fraud's reference vector, passed by key."""
    pool: list[dict[str, object]] = []
    for i, request in enumerate(workload.requests):
        inputs: dict[str, object] = dict(request)
        for name in workload.stored_inputs:
            inputs[name] = Ref(ref_key(workload.ref_index[i]))
        pool.append(inputs)
    return pool

