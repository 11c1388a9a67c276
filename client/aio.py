"""The asyncio client: the operations of operations.py over pipelined connections.

One connection per node carries commands (one node for a single Redis; in a
Redis Cluster, the node owning each command's slot). Everything the callers
ask in one turn of the event loop is written together, without waiting for
earlier replies, and concurrent runs travel in one MODELRUNMANY call per
partition, so 256 callers cost a few commands, not 256. One more connection
per partition blocks on its reply stream and wakes each caller when its
answer arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from .connection import Pipe, aroundtrip
from .operations import Call, Operations, Plan, Primaries, Submit, enqueue_commands
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
    InferisError,
    NoAnswerError,
    OutcomeUnknownError,
    ReplicationError,
    translate_error,
)
from .protocol.replies import RunResult
from .routing import AsyncRoutes, is_cluster_url, must_resend

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
# A command to write: its arguments, kind (read, write, run), where it goes
# ((routing key, node name or None)) and the futures or runs it settles.
_Call = tuple[list[Any], str, tuple[str, "str | None"], list[Any]]


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
    """asyncio client for inferis; method names follow redisai-py where they can.

    ``url``: ``redis://``, ``rediss://``, ``redis+sentinel://`` or
    ``redis+cluster://`` (see connection.py and routing.py).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379",
        *,
        partition: int = 0,
        partitions: int | Sequence[int] | None = None,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        ttl_ms: int = DEFAULT_TTL_MS,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        reconnect_window_s: float = RECONNECT_WINDOW_S,
        caller: str = "",
        region: str = "",
    ) -> None:
        super().__init__(
            partition=partition, timeout_ms=timeout_ms, ttl_ms=ttl_ms,
            wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms,
            reconnect_window_s=reconnect_window_s, partitions=partitions,
            cluster=is_cluster_url(url), caller=caller, region=region,
        )
        self._url = url
        # No socket timeout: replies are awaited with their own (see connection.py).
        self._routes = AsyncRoutes(url, socket_timeout=None)
        self._routes_ready = not self.cluster
        self._pipes: dict[str, Pipe] = {}
        self._outbox: list[_Item] = []
        self._flush_due = False
        self._settling: set[asyncio.Task[None]] = set()
        self._readers: dict[int, asyncio.Task[None]] = {}
        self._reader_conns: list[Any] = []

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        tasks = [*self._readers.values(), *self._settling]
        for task in tasks:
            task.cancel()
        if tasks:
            # A read blocked inside redis-py may take its time to notice; don't wait on it.
            await asyncio.wait(tasks, timeout=1.0)
        self._readers = {}
        for pipe in self._pipes.values():
            await pipe.close()
        for conn in self._reader_conns:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
        await self._routes.aclose()

    # ---------------------------------------------------------------- plans

    def _node_of(self, key: str) -> str | None:
        return self._routes.node_of(key) if self._routes_ready else None

    def _perform(self, plan: Plan[Any]) -> Any:
        return self._drive(plan)

    async def _drive(self, plan: Plan[Any]) -> Any:
        value: Any = None
        error: InferisError | None = None
        try:
            while True:
                # A step's failure is raised inside the plan, which may handle it.
                step = plan.send(value) if error is None else plan.throw(error)
                error = None
                try:
                    if isinstance(step, Primaries):
                        await self._open_routes()
                        value = self._routes.primaries()
                    else:
                        value = await self._step(step)
                except InferisError as exc:
                    error = exc
        except StopIteration as stop:
            return stop.value

    def _step(self, step: Command | Call | Submit) -> asyncio.Future[Any]:
        """Queue ``step``; it is written when FLUSH_AT steps wait, or at the end of
        this turn of the event loop. The future holds its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if isinstance(step, Submit):
            run = _Run(future, step, self._inflight, loop)
            reader = self._readers.get(step.partition)
            if reader is None or reader.done():
                self._readers[step.partition] = loop.create_task(self._read_loop(step.partition))
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

    async def _open_routes(self) -> None:
        if not self._routes_ready:
            await self._routes.open()
            self._routes_ready = True

    def _flush(self) -> None:
        """Write what is queued now, one write per node; tasks settle the futures
        from the replies."""
        self._flush_due = False
        batch, self._outbox = self._outbox, []
        batch = [(step, fut) for step, fut in batch if not fut.done()]
        if batch:
            self._write(self._calls(batch))

    def _write(self, calls: list[_Call], retry: _Retry | None = None) -> None:
        """Write ``calls`` to their nodes; ``retry`` bounds their retries (a deadline in
        loop time and a growing pause), kept when they are sent again elsewhere."""
        loop = asyncio.get_running_loop()
        if retry is None:
            retry = _Retry(loop.time() + self.reconnect_window_s)
        if not self._routes_ready:  # the slot map is not known yet: learn it first
            task = loop.create_task(self._write_later(calls, retry))
        else:
            for node, group in self._by_node(calls).items():
                pipe = self._pipe(node)
                wire = self._wire(group)
                sent = pipe.write(wire) if pipe.ready else None
                task = loop.create_task(self._settle(node, group, wire, sent, retry))
                self._settling.add(task)
                task.add_done_callback(self._settling.discard)
            return
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _write_later(self, calls: list[_Call], retry: _Retry) -> None:
        try:
            await self._open_routes()
        except (*_DOWN, redis.RedisError) as exc:
            for call in calls:
                for owner in call[3]:
                    _fail(owner, ConnectionLostError(f"the cluster could not be reached: {exc}"))
            return
        self._write(calls, retry)

    def _by_node(self, calls: list[_Call]) -> dict[str, list[_Call]]:
        groups: dict[str, list[_Call]] = {}
        for call in calls:
            route, node = call[2]
            name = node if node is not None else self._routes.node_of(route)
            groups.setdefault(name, []).append(call)
        return groups

    def _pipe(self, node: str) -> Pipe:
        pipe = self._pipes.get(node)
        if pipe is None:
            pipe = self._pipes[node] = Pipe(lambda: self._routes.connection_to(node))
        return pipe

    def _wire(self, group: list[_Call]) -> list[list[Any]]:
        wire = [args for args, _, _, _ in group]
        if self._durable(group):  # WAIT covers every write sent before it on this connection
            wire.append(["WAIT", self.wait_replicas, self.wait_timeout_ms])
        return wire

    def _durable(self, group: list[_Call]) -> bool:
        return self.wait_replicas > 0 and any(kind != "read" for _, kind, _, _ in group)

    def _calls(self, batch: Sequence[_Item]) -> list[_Call]:
        """The commands of a batch, each with its kind, where it goes, and the
        futures it settles; runs travel together (enqueue_commands)."""
        runs = [(step, fut) for step, fut in batch if isinstance(step, Submit)]
        calls: list[_Call] = []
        for step, fut in batch:
            if isinstance(step, Command):
                calls.append((step.as_args(), "write" if step.writes else "read",
                              (step.keys[0] if step.keys else "", None), [fut]))
            elif isinstance(step, Call):
                calls.append((list(step.args), "write" if step.writes else "read",
                              (step.route or "", step.node), [fut]))
        for command, owners in enqueue_commands(
            self._inflight, [s for s, _ in runs], [f for _, f in runs]
        ):
            calls.append((command.as_args(), "run", (command.keys[0], None), owners))
        return calls

    async def _settle(
        self,
        node: str,
        group: list[_Call],
        wire: list[list[Any]],
        sent: list[asyncio.Future[Any]] | None,
        retry: _Retry,
    ) -> None:
        """Await a node's replies and settle its futures. While Redis restarts or fails
        over, the batch is resent for a while: stores are content-addressed, tensor
        writes are SETs, and a run that did reach Redis is enqueued twice under one
        request id, whose caller takes the first answer. A command answered MOVED or
        ASK, or TRYAGAIN (a slot moved or is moving) is sent again, after a short
        pause, where the cluster then says."""
        loop = asyncio.get_running_loop()
        pipe = self._pipe(node)
        while True:
            try:
                if sent is None:
                    await pipe.open()
                    sent = pipe.write(wire)
                replies = await asyncio.wait_for(asyncio.gather(*sent), COMMAND_TIMEOUT_S)
                break
            except (TimeoutError, *_DOWN) as exc:
                _raise_if_cancelled()
                await pipe.reset()
                if loop.time() > retry.deadline:
                    for _, kind, _, owners in group:
                        for owner in owners:
                            _fail(owner, _lost(kind, owner, exc, self.reconnect_window_s))
                    return
                await asyncio.sleep(retry.backoff.next())
                if self.cluster:  # the node may be gone for good: route again
                    await self._refresh_quietly()
                    self._write(group, retry)
                    return
                sent = None
        shortfall = None
        if self._durable(group):
            acked = replies.pop()
            if isinstance(acked, Exception) or acked < self.wait_replicas:
                shortfall = ReplicationError.shortfall(
                    0 if isinstance(acked, Exception) else acked,
                    self.wait_replicas, self.wait_timeout_ms,
                )
        moved = [call for call, reply in zip(group, replies, strict=True)
                 if must_resend(reply, self.cluster)]
        for call, reply in zip(group, replies, strict=True):
            _, kind, _, owners = call
            if must_resend(reply, self.cluster):
                continue
            for owner in owners:
                if owner.done():
                    continue
                if isinstance(reply, Exception):
                    _fail(owner, translate_error(reply))
                elif shortfall is not None and kind != "read":
                    _fail(owner, shortfall)
                elif kind != "run":  # a run is settled by its answer
                    owner.set_result(reply)  # type: ignore[union-attr]
        if moved:
            if loop.time() > retry.deadline:
                for _, kind, _, owners in moved:
                    for owner in owners:
                        _fail(owner, _lost(kind, owner, redis.ConnectionError(
                            "the slot kept moving"), self.reconnect_window_s))
                return
            await self._refresh_quietly()
            await asyncio.sleep(retry.backoff.next())
            self._write(moved, retry)

    async def _refresh_quietly(self) -> None:
        try:
            await self._routes.refresh()
        except (*_DOWN, redis.RedisError):
            pass  # the cluster is between states: the next try asks again

    async def _read_loop(self, partition: int) -> None:
        """Block on one partition's reply stream and route each answer to its waiter;
        follow the stream when Redis restarts, fails over or moves its slot."""
        backoff = Backoff(cap=1.0)
        stream = self._inflight.reply_stream(partition)
        conn = None
        while True:
            try:
                if conn is None:
                    await self._open_routes()
                    conn = self._routes.connection_to(self._routes.node_of(stream))
                    self._reader_conns.append(conn)
                    await conn.connect()  # explicitly: Sentinel finds the primary here
                replies = await aroundtrip(
                    conn, self._inflight.read_commands(partition), READ_TIMEOUT_S
                )
                if must_resend(replies[-1], self.cluster):
                    raise redis.ConnectionError("the reply stream's slot moved")
                if isinstance(replies[-1], Exception):  # e.g. NOPERM on the reply stream
                    raise replies[-1]
                backoff.reset()
            except (*_DOWN, redis.RedisError):
                # Redis restarted or failed over: keep waiting; the reply streams
                # are in Redis, not here, so nothing is lost.
                _raise_if_cancelled()
                if conn is not None:
                    self._reader_conns.remove(conn)
                    await conn.disconnect()
                    conn = None
                await asyncio.sleep(backoff.next())
                await self._refresh_quietly()
                continue
            self._inflight.dispatch(replies[-1])


@dataclass
class _Retry:
    """How long a batch of calls may still be retried, and how long to pause next."""

    deadline: float
    backoff: Backoff = field(default_factory=lambda: Backoff(cap=0.5))


def _raise_if_cancelled() -> None:
    """redis-py can turn a cancellation into a timeout error: don't retry through it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
