"""The asyncio client: the operations of operations.py over two connections.

One connection carries commands. Everything the callers ask while it waits for
a round trip is sent together in the next one, and concurrent runs travel in
one MODELRUNMANY call per partition, so 256 callers cost a few commands, not
256. A second connection blocks on the reply streams and wakes each caller
when its answer arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import redis

from .connection import aroundtrip, async_pool
from .operations import Call, Operations, Plan, Submit, enqueue_commands
from .protocol.backoff import Backoff
from .protocol.commands import Command
from .protocol.defaults import (
    DEFAULT_TIMEOUT_MS,
    DEFAULT_TTL_MS,
    REPLY_GRACE_S,
    REPLY_READ_BLOCK_MS,
)
from .protocol.errors import NoAnswerError, ReplicationError, translate_error
from .protocol.replies import RunResult

# How long a command keeps retrying while Redis restarts or fails over.
RECONNECT_WINDOW_S = 15.0
_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)

_Item = tuple[Command | Call | Submit, "asyncio.Future[Any]"]


class AsyncClient(Operations):
    """asyncio client for inferis; method names follow redisai-py where they can."""

    def __init__(
        self,
        url: str = "redis://localhost:6379",
        *,
        partition: int = 0,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        ttl_ms: int = DEFAULT_TTL_MS,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        super().__init__(
            partition=partition, timeout_ms=timeout_ms, ttl_ms=ttl_ms,
            wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms,
        )
        self._url = url
        self._pool = async_pool(url, socket_timeout=REPLY_READ_BLOCK_MS / 1000 + 10)
        self._outbox: list[_Item] = []
        self._wake: asyncio.Event | None = None
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._conns: list[Any] = []

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        tasks = [t for t in (self._sender, self._reader) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # A read blocked inside redis-py may take its time to notice; don't wait on it.
            await asyncio.wait(tasks, timeout=1.0)
        self._sender = self._reader = None
        for conn in self._conns:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
        self._conns = []
        await self._pool.aclose()

    # ---------------------------------------------------------------- plans

    def _perform(self, plan: Plan[Any]) -> Any:
        return self._drive(plan)

    async def _drive(self, plan: Plan[Any]) -> Any:
        value: Any = None
        try:
            while True:
                value = await self._step(plan.send(value))
        except StopIteration as stop:
            return stop.value

    def _step(self, step: Command | Call | Submit) -> asyncio.Future[Any]:
        """Queue ``step`` for the next round trip; the future holds its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if isinstance(step, Submit):
            self._expect(step, future)
        self._outbox.append((step, future))
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send_loop())
        self._wake.set()
        return future

    def _expect(self, step: Submit, future: asyncio.Future[Any]) -> None:
        """Route the run's answer to ``future``; NoAnswerError past its deadline."""
        rid, timeout_ms = step.request.rid, step.request.timeout_ms
        loop = asyncio.get_running_loop()

        def resolve(result: RunResult) -> None:
            if not future.done():
                future.set_result(result)

        def expire() -> None:
            self._inflight.forget(rid)
            if not future.done():
                future.set_exception(NoAnswerError(
                    f"request {rid} got no answer within its {timeout_ms} ms deadline"
                ))

        timer = loop.call_later(timeout_ms / 1000 + REPLY_GRACE_S, expire)
        future.add_done_callback(lambda _: (timer.cancel(), self._inflight.forget(rid)))
        self._inflight.expect(rid, resolve)
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read_loop())

    # ---------------------------------------------------------------- transport

    async def _connection(self) -> Any:
        conn = await self._pool.get_connection()
        self._conns.append(conn)
        return conn

    async def _send_loop(self) -> None:
        assert self._wake is not None
        conn = await self._connection()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._outbox = self._outbox, []
            batch = [(step, fut) for step, fut in batch if not fut.done()]
            if batch:
                await self._send(conn, batch)

    async def _send(self, conn: Any, batch: Sequence[_Item]) -> None:
        """One round trip for everything queued; each future gets its result.

        A run's future is settled by its answer, or here by the refusal of the
        call that carried it.
        """
        runs = [(step, fut) for step, fut in batch if isinstance(step, Submit)]
        calls: list[tuple[list[Any], str, list[asyncio.Future[Any]]]] = [
            (step.as_args() if isinstance(step, Command) else list(step.args),
             "write" if step.writes else "read", [fut])
            for step, fut in batch if not isinstance(step, Submit)
        ]
        for command, owners in enqueue_commands(
            self._inflight, [s for s, _ in runs], [f for _, f in runs]
        ):
            calls.append((command.as_args(), "run", owners))
        wire = [args for args, _, _ in calls]
        durable = self.wait_replicas > 0 and any(kind != "read" for _, kind, _ in calls)
        if durable:  # WAIT covers every write sent before it on this connection
            wire.append(["WAIT", self.wait_replicas, self.wait_timeout_ms])
        try:
            replies = await self._roundtrip(conn, wire)
        except Exception as exc:  # Redis stayed away: fail this batch only
            for _, _, owners in calls:
                for fut in owners:
                    if not fut.done():
                        fut.set_exception(exc)
            return
        shortfall = None
        if durable:
            acked = replies.pop()
            if isinstance(acked, Exception) or acked < self.wait_replicas:
                shortfall = ReplicationError.shortfall(
                    0 if isinstance(acked, Exception) else acked,
                    self.wait_replicas, self.wait_timeout_ms,
                )
        for (_, kind, owners), reply in zip(calls, replies, strict=True):
            for fut in owners:
                if fut.done():
                    continue
                if isinstance(reply, Exception):
                    fut.set_exception(translate_error(reply))
                elif shortfall is not None and kind != "read":
                    fut.set_exception(shortfall)
                elif kind != "run":
                    fut.set_result(reply)

    async def _roundtrip(self, conn: Any, wire: list[list[Any]]) -> list[Any]:
        """Send a pipeline; ride over a Redis restart or failover for a short while.

        Resending is safe: stores are content-addressed, tensor writes are SETs,
        and a run whose first send did reach Redis is enqueued twice under one
        request id; the caller takes the first answer.
        """
        backoff = Backoff(cap=0.5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONNECT_WINDOW_S
        while True:
            try:
                return await aroundtrip(conn, wire)
            except _DOWN:
                _raise_if_cancelled()
                await conn.disconnect()
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(backoff.next())

    async def _read_loop(self) -> None:
        conn = await self._connection()
        backoff = Backoff(cap=1.0)
        while True:
            try:
                replies = await aroundtrip(conn, self._inflight.read_commands())
                backoff.reset()
            except _DOWN:
                # Redis restarted or failed over: keep waiting; the reply streams
                # are in Redis, not here, so nothing is lost.
                _raise_if_cancelled()
                await conn.disconnect()
                await asyncio.sleep(backoff.next())
                continue
            self._inflight.dispatch(replies[-1])


def _raise_if_cancelled() -> None:
    """redis-py can turn a cancellation into a timeout error: don't retry through it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
