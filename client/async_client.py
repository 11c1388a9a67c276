"""The asyncio client: many requests in flight over two connections.

One connection carries commands: concurrent calls are queued and sent together
as one pipeline (automatic pipelining), so 200 callers cost a few round trips,
not 200 connections. A second connection blocks on the reply streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import core
from .base import ClientBase
from .connection import async_connection
from .core import Command, Inputs, ModelInfo, RunResult, StoredVersion
from .errors import NoAnswerError
from .tensor import decode_tensor, encode_tensor

_MAX_PIPELINE = 512
# How long a command keeps retrying while Redis restarts or fails over.
RECONNECT_WINDOW_S = 15.0




class AsyncClient(ClientBase):
    """asyncio client for inferis; method names follow redisai-py where they can."""

    def __init__(
        self,
        url: str = "redis://localhost:6379",
        *,
        partition: int = 0,
        timeout_ms: int = core.DEFAULT_TIMEOUT_MS,
        ttl_ms: int = core.DEFAULT_TTL_MS,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        connection: aioredis.Redis | None = None,
    ) -> None:
        super().__init__(
            url, partition=partition, timeout_ms=timeout_ms, ttl_ms=ttl_ms,
            wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms,
        )
        self._redis = connection or async_connection(url)
        self._queue: asyncio.Queue[tuple[list[Any], bool, asyncio.Future[Any]]] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reader_conn: aioredis.Redis | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in (self._sender, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._sender = self._reader = None
        if self._reader_conn is not None:
            await self._reader_conn.aclose()
        await self._redis.aclose()

    # ---------------------------------------------------------------- transport

    async def _call(self, *args: Any, durable: bool = False) -> Any:
        """Send one command through the shared pipeline; raise inferis errors.

        ``durable`` commands wait for ``wait_replicas`` replicas (one WAIT per pipeline).
        """
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send_loop())
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put_nowait((list(args), durable, future))
        return await future

    async def _fcall(self, command: Command) -> Any:
        return await self._call(*command.as_args(), durable=command.writes)

    async def _send_loop(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < _MAX_PIPELINE:
                batch.append(self._queue.get_nowait())
            batch = [item for item in batch if not item[2].done()]
            if not batch:
                continue
            commands = [args for args, _, _ in batch]
            durable = self.wait_replicas > 0 and any(d for _, d, _ in batch)
            if durable:  # WAIT covers every write sent before it on this connection
                commands.append(["WAIT", self.wait_replicas, self.wait_timeout_ms])
            try:
                results = await self._send_with_retry(commands)
            except Exception as exc:  # Redis stayed away: fail this batch only
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            shortfall = None
            if durable:
                acked = results.pop()
                if isinstance(acked, Exception) or acked < self.wait_replicas:
                    shortfall = core.replication_error(
                        0 if isinstance(acked, Exception) else acked,
                        self.wait_replicas, self.wait_timeout_ms,
                    )
            for (_, needs_replicas, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(core.translate_error(res))
                elif shortfall is not None and needs_replicas:
                    fut.set_exception(shortfall)
                else:
                    fut.set_result(res)

    async def _send_with_retry(self, commands: list[list[Any]]) -> list[Any]:
        """Send a pipeline; ride over a Redis restart or failover for a short while.

        Resending is safe: stores are content-addressed and tensor writes are
        SETs. A run whose first send did reach Redis is enqueued twice under one
        request id; both are answered with identical outputs and the caller
        takes the first answer.
        """
        delay = 0.05
        deadline = asyncio.get_running_loop().time() + RECONNECT_WINDOW_S
        while True:
            try:
                pipe = self._redis.pipeline(transaction=False)
                for args in commands:
                    pipe.execute_command(*args)
                return await pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            if self._reader_conn is None:
                self._reader_conn = async_connection(self._url)
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        assert self._reader_conn is not None
        backoff = 0.05
        while True:
            try:
                pipe = self._reader_conn.pipeline(transaction=False)
                for cmd in self._router.read_commands():
                    pipe.execute_command(*cmd)
                results = await pipe.execute()
                self._router.dispatch(results[-1])
                backoff = 0.05
            except (RedisConnectionError, RedisTimeoutError, OSError):
                # Redis restarted or failed over: keep waiting; the reply
                # streams are in Redis, not here, so nothing is lost.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    # ---------------------------------------------------------------- runs

    async def _run(self, build: Any, rid: str, timeout_ms: int) -> RunResult:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[RunResult] = loop.create_future()

        def resolve(result: RunResult) -> None:
            if not waiter.done():
                waiter.set_result(result)

        self._router.expect(rid, resolve)
        self._ensure_reader()
        try:
            await self._fcall(build)
            try:
                result = await asyncio.wait_for(
                    waiter, timeout_ms / 1000 + core.REPLY_GRACE_S
                )
            except TimeoutError:
                raise NoAnswerError(
                    f"request {rid} got no answer within its {timeout_ms} ms deadline"
                ) from None
        finally:
            self._router.forget(rid)
        if result.missing and result.error is None:
            values = await self._call("MGET", *[result.output_keys[n] for n in result.missing])
            core.fill_missing(result, values)
        return result

    async def run(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int | str | None = None,
        timeout_ms: int | None = None,
        keep_keys: bool = False,
    ) -> RunResult:
        """Run ``model`` on inline inputs; the result carries outputs or an error.

        ``keep_keys``: also keep the inputs and outputs as keys (for the TTL)."""
        command, rid, timeout = self._predict_command(
            model, inputs, version, timeout_ms, keep_keys
        )
        return await self._run(command, rid, timeout)

    async def predict(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int | str | None = None,
        timeout_ms: int | None = None,
        keep_keys: bool = False,
    ) -> dict[str, np.ndarray]:
        """One call: inputs in, output arrays by name out; errors raise."""
        result = await self.run(
            model, inputs, version=version, timeout_ms=timeout_ms, keep_keys=keep_keys
        )
        return result.raise_for_error().outputs

    async def modelexecute(
        self,
        key: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        *,
        version: int | str | None = None,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        timeout_ms: int | None = None,
    ) -> RunResult:
        """Run model ``key`` on existing tensor keys, writing ``outputs`` keys."""
        command, rid, timeout = self._execute_command(
            key, inputs, outputs, version, input_names, output_names, timeout_ms
        )
        return (await self._run(command, rid, timeout)).raise_for_error()

    # ---------------------------------------------------------------- tensors

    async def tensorset(self, key: str, tensor: Any) -> None:
        await self._fcall(Command("TENSORSET", [key], ["RAW", encode_tensor(tensor)]))

    async def tensorget(self, key: str) -> np.ndarray:
        return decode_tensor(await self._fcall(Command("TENSORGET", [key], [])))

    # ---------------------------------------------------------------- models

    async def modelstore(
        self, name: str, backend: str, data: bytes, **options: Any
    ) -> StoredVersion:
        """Store a new immutable version (identical content returns the existing one)."""
        reply: Any = None
        for command in core.build_modelstore(name, backend, data, **options):
            reply = await self._fcall(command)
        return core.parse_stored(name, reply)

    async def pipelinestore(
        self,
        name: str,
        steps: Sequence[Mapping[str, Any]],
        *,
        inputs: Sequence[str],
        outputs: Sequence[str],
        tags: Mapping[str, str] | None = None,
    ) -> StoredVersion:
        """Store a pipeline: models run in sequence on one worker, one MODELRUN in all.

        Each step is ``{"model": name, "version": n (optional), "inputs": [...] or
        {model_input: tensor}, "outputs": [...] or {model_output: tensor}}``.
        """
        blob = core.pipeline_blob(inputs, outputs, steps)
        return await self.modelstore(name, "pipeline", blob, format="json", tags=tags)

    async def modelget(
        self, name: str, version: int | str | None = None, *, blob: bool = False
    ) -> ModelInfo | tuple[ModelInfo, bytes]:
        reply = await self._fcall(self._modelget_command(name, version, blob))
        return self._modelget_result(reply, blob)

    async def modelversions(self, name: str) -> list[int]:
        reply = await self._fcall(Command("MODELGET", [name], ["VERSIONS"]))
        return [int(v) for v in reply]

    async def modeldel(self, name: str, version: int | str | None = None) -> int:
        return int(await self._fcall(self._modeldel_command(name, version)))

    async def modelstats(self, name: str) -> dict[str, int]:
        """Counters workers flush every few seconds: requests, errors, run_us, queue_us."""
        return self._stats(await self._call("HGETALL", core.keys.model_key(name, "stats")))

    async def modellist(self) -> list[str]:
        names: list[str] = []
        cursor: Any = 0
        while True:
            cursor, found = await self._call(
                "SCAN", cursor, "MATCH", "inferis:{*}:latest", "COUNT", 1000
            )
            names += [core.model_name_of(k) for k in found]
            if int(cursor) == 0:
                return sorted(set(names))

    async def set_max_queue(self, depth: int) -> None:
        """Refuse MODELRUN with EBUSY while this many requests are queued (0: no bound)."""
        await self._call("HSET", self._config_key(), "max_queue", depth)
