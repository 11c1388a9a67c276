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

from .connection import Pipe, aroundtrip, async_pool
from .operations import Call, Operations, Plan, Submit, enqueue_commands
from .protocol.backoff import Backoff
from .protocol.commands import Command
from .protocol.defaults import (
    DEFAULT_TIMEOUT_MS,
    DEFAULT_TTL_MS,
    RECONNECT_WINDOW_S,
    REPLY_GRACE_S,
    REPLY_READ_BLOCK_MS,
)
from .protocol.errors import (
    ConnectionLostError,
    NoAnswerError,
    OutcomeUnknownError,
    ReplicationError,
    translate_error,
)
from .protocol.replies import RunResult

# A reply later than this means the connection is dead (a frozen or vanished host).
COMMAND_TIMEOUT_S = 30.0
READ_TIMEOUT_S = REPLY_READ_BLOCK_MS / 1000 + 10
# Runs written at once when this many are queued; fewer wait for the end of the
# event loop's turn. A burst of answers thus goes back out in slices the workers
# can start on while the rest is still being prepared.
FLUSH_AT = 32
_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)

class _Run:
    """A run waiting for its answer: settled once, by the answer, its deadline, or the
    refusal of the call that carried it."""

    __slots__ = ("future", "inflight", "rid", "timeout_ms", "timer")

    def __init__(
        self,
        future: asyncio.Future[Any],
        step: Submit,
        inflight: Any,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.future, self.inflight = future, inflight
        self.rid, self.timeout_ms = step.request.rid, step.request.timeout_ms
        self.timer = loop.call_later(self.timeout_ms / 1000 + REPLY_GRACE_S, self.expire)
        inflight.expect(self.rid, self)

    def __call__(self, result: RunResult) -> None:  # the answer (InFlight popped us)
        self.timer.cancel()
        if not self.future.done():
            self.future.set_result(result)

    def done(self) -> bool:
        return self.future.done()

    def expire(self) -> None:
        self.fail(NoAnswerError(
            f"request {self.rid} got no answer within its {self.timeout_ms} ms deadline"
        ))

    def fail(self, error: BaseException) -> None:
        self.timer.cancel()
        self.inflight.forget(self.rid)
        if not self.future.done():
            self.future.set_exception(error)


_Item = tuple[Command | Call | Submit, "asyncio.Future[Any] | _Run"]


def _lost(kind: str, owner: Any, exc: BaseException, window_s: float) -> ConnectionLostError:
    """What a caller is told when Redis stayed away past the reconnect window."""
    if kind == "run":
        return OutcomeUnknownError(
            f"request {owner.rid}: the connection to Redis was lost while enqueueing it "
            f"({exc}); it may be queued and answered, but this client stopped waiting",
            owner.rid,
        )
    return ConnectionLostError(f"Redis could not be reached for {window_s:g} s: {exc}")


def _fail(owner: asyncio.Future[Any] | _Run, error: BaseException) -> None:
    if isinstance(owner, _Run):
        owner.fail(error)
    elif not owner.done():
        owner.set_exception(error)


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
        reconnect_window_s: float = RECONNECT_WINDOW_S,
    ) -> None:
        super().__init__(
            partition=partition, timeout_ms=timeout_ms, ttl_ms=ttl_ms,
            wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms,
            reconnect_window_s=reconnect_window_s,
        )
        self._url = url
        # No socket timeout: replies are awaited with their own (see connection.py).
        self._pool = async_pool(url, socket_timeout=None)
        self._pipe = Pipe(self._pool)
        self._outbox: list[_Item] = []
        self._flush_due = False
        self._settling: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._reader_conn: Any = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        tasks = [t for t in (self._reader, *self._settling) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # A read blocked inside redis-py may take its time to notice; don't wait on it.
            await asyncio.wait(tasks, timeout=1.0)
        self._reader = None
        await self._pipe.close()
        if self._reader_conn is not None:
            with contextlib.suppress(Exception):
                await self._reader_conn.disconnect(nowait=True)
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
        """Queue ``step``; it is written when FLUSH_AT steps wait, or at the end of
        this turn of the event loop. The future holds its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if isinstance(step, Submit):
            run = _Run(future, step, self._inflight, loop)
            if self._reader is None or self._reader.done():
                self._reader = loop.create_task(self._read_loop())
            self._outbox.append((step, run))
        else:
            self._outbox.append((step, future))
        if len(self._outbox) >= FLUSH_AT:
            self._flush()
        elif not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush)
        return future

    # ---------------------------------------------------------------- transport

    def _flush(self) -> None:
        """Write what is queued now; a task settles its futures from the replies."""
        self._flush_due = False
        batch, self._outbox = self._outbox, []
        batch = [(step, fut) for step, fut in batch if not fut.done()]
        if not batch:
            return
        calls = self._calls(batch)
        wire = [args for args, _, _ in calls]
        durable = self.wait_replicas > 0 and any(kind != "read" for _, kind, _ in calls)
        if durable:  # WAIT covers every write sent before it on this connection
            wire.append(["WAIT", self.wait_replicas, self.wait_timeout_ms])
        sent = self._pipe.write(wire) if self._pipe.ready else None
        task = asyncio.get_running_loop().create_task(self._settle(calls, wire, sent, durable))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def _calls(self, batch: Sequence[_Item]) -> list[tuple[list[Any], str, list[Any]]]:
        """The commands of a batch, each with its kind and the futures it settles;
        runs travel together (enqueue_commands)."""
        runs = [(step, fut) for step, fut in batch if isinstance(step, Submit)]
        calls: list[tuple[list[Any], str, list[Any]]] = [
            (step.as_args() if isinstance(step, Command) else list(step.args),
             "write" if step.writes else "read", [fut])
            for step, fut in batch if not isinstance(step, Submit)
        ]
        for command, owners in enqueue_commands(
            self._inflight, [s for s, _ in runs], [f for _, f in runs]
        ):
            calls.append((command.as_args(), "run", owners))
        return calls

    async def _settle(
        self,
        calls: list[tuple[list[Any], str, list[Any]]],
        wire: list[list[Any]],
        sent: list[asyncio.Future[Any]] | None,
        durable: bool,
    ) -> None:
        """Await a batch's replies and settle its futures. While Redis restarts or fails
        over, the batch is resent for a while: stores are content-addressed, tensor
        writes are SETs, and a run that did reach Redis is enqueued twice under one
        request id, whose caller takes the first answer."""
        loop = asyncio.get_running_loop()
        backoff, deadline = Backoff(cap=0.5), loop.time() + self.reconnect_window_s
        while True:
            try:
                if sent is None:
                    await self._pipe.open()
                    sent = self._pipe.write(wire)
                replies = await asyncio.wait_for(asyncio.gather(*sent), COMMAND_TIMEOUT_S)
                break
            except (TimeoutError, *_DOWN) as exc:
                _raise_if_cancelled()
                await self._pipe.reset()
                if loop.time() > deadline:
                    for _, kind, owners in calls:
                        for owner in owners:
                            _fail(owner, _lost(kind, owner, exc, self.reconnect_window_s))
                    return
                await asyncio.sleep(backoff.next())
                sent = None
        shortfall = None
        if durable:
            acked = replies.pop()
            if isinstance(acked, Exception) or acked < self.wait_replicas:
                shortfall = ReplicationError.shortfall(
                    0 if isinstance(acked, Exception) else acked,
                    self.wait_replicas, self.wait_timeout_ms,
                )
        for (_, kind, owners), reply in zip(calls, replies, strict=True):
            for owner in owners:
                if owner.done():
                    continue
                if isinstance(reply, Exception):
                    _fail(owner, translate_error(reply))
                elif shortfall is not None and kind != "read":
                    _fail(owner, shortfall)
                elif kind != "run":  # a run is settled by its answer
                    owner.set_result(reply)  # type: ignore[union-attr]

    async def _read_loop(self) -> None:
        if self._reader_conn is None:
            self._reader_conn = await self._pool.get_connection()
        conn = self._reader_conn
        backoff = Backoff(cap=1.0)
        while True:
            try:
                replies = await aroundtrip(conn, self._inflight.read_commands(), READ_TIMEOUT_S)
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
