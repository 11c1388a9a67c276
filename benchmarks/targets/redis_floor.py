"""The transport floor: plain redis-py asyncio PING, and GET of a request-sized value."""

from __future__ import annotations

import asyncio

import numpy as np
import redis
import redis.asyncio as aioredis

from inferis.engine.local.embedded import EmbeddedRedis

from ..loadgen import Caller
from ..workloads import Workload
from .base import RunConfig, Series, Target

_KEYS = 64


class RedisFloorTarget(Target):
    def __init__(self) -> None:
        super().__init__(
            name="redis_floor",
            note="redis-py asyncio on a private redis-server, a connection pool of one "
            "connection per request in flight; GET reads a value as large as the "
            "workload's whole request input (all tensors by value)",
        )
        self._server: EmbeddedRedis | None = None
        self._pool: aioredis.Redis | None = None

    async def start(self, workloads: list[Workload], config: RunConfig) -> None:
        self._server = EmbeddedRedis(config.work_dir / "redis-floor", appendonly=False)
        await asyncio.to_thread(self._server.start)
        conn = redis.Redis.from_url(self._server.url)
        try:
            for w in workloads:
                value = np.random.default_rng(0).bytes(w.request_bytes())
                conn.mset({f"floor:{w.name}:{i}": value for i in range(_KEYS)})
        finally:
            conn.close()
        self.settings = {"redis-py": redis.__version__, "appendonly": "no"}

    def series(self, workload: Workload) -> list[Series]:
        assert self._server is not None
        url, name = self._server.url, workload.name

        async def open_ping(concurrency: int) -> Caller:
            client = self._open(url, concurrency)

            async def call(i: int) -> object:
                return await client.ping()

            return call

        async def open_get(concurrency: int) -> Caller:
            client = self._open(url, concurrency)

            async def call(i: int) -> object:
                return await client.get(f"floor:{name}:{i % _KEYS}")

            return call

        return [
            Series("redis PING", open_ping, self._close),
            Series("redis GET", open_get, self._close),
        ]

    def _open(self, url: str, concurrency: int) -> aioredis.Redis:
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=concurrency)
        self._pool = aioredis.Redis(connection_pool=pool)
        return self._pool

    async def _close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    async def answer(self, workload: Workload, index: int) -> dict[str, np.ndarray] | None:
        return None  # no model behind it

    async def stop(self) -> None:
        await self._close()
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
            self._server = None
