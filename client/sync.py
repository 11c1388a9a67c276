"""The blocking client: the operations of operations.py over blocking connections.

Commands go out on connections taken from the pool of the node that serves
their key (one Redis, or the node of a Redis Cluster that owns the slot).
Answers come back on one reply connection per partition, read by whichever
waiting thread gets there first (the others wait on a condition), so a
single-threaded caller reads its own answer without a thread hand-off.
``submit`` enqueues without waiting and returns a future, so one thread can
keep many requests in flight; ``submit_many`` sends many runs in one command.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import redis

from .connection import roundtrip
from .operations import Call, Inputs, Operations, Plan, Primaries, Submit, enqueue_commands
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
    ArgumentError,
    ConnectionLostError,
    InferisError,
    NoAnswerError,
    OutcomeUnknownError,
    ReplicationError,
    translate_error,
)
from .protocol.replies import RunResult
from .routing import Routes, is_cluster_url, must_resend

_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


class PendingRun(Future):  # type: ignore[type-arg]
    """A submitted run: pass it to :meth:`Client.wait`."""

    def __init__(self, submit: Submit, plan: Plan[RunResult]) -> None:
        super().__init__()
        self.rid = submit.request.rid
        self.partition = submit.partition
        self.timeout_ms = submit.request.timeout_ms
        self.deadline = time.monotonic() + self.timeout_ms / 1000 + REPLY_GRACE_S
        self.plan = plan


class _Reader:
    """One partition's reply connection, and whose turn it is to read it."""

    def __init__(self) -> None:
        self.conn: Any = None
        self.reading = False
        self.turn = threading.Condition()


class Client(Operations):
    """Blocking client for inferis; method names follow redisai-py where they can.

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
        # Reply connections block in XREAD: their sockets wait longer than that.
        self._routes = Routes(url, socket_timeout=REPLY_READ_BLOCK_MS / 1000 + 10)
        self._readers: dict[int, _Reader] = {}
        self._readers_lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        for reader in list(self._readers.values()):
            with reader.turn:
                if reader.conn is not None and not reader.reading:
                    reader.conn.disconnect()
        self._routes.disconnect()

    # ---------------------------------------------------------------- plans

    def _node_of(self, key: str) -> str | None:
        return self._routes.node_of(key)

    def _perform(self, plan: Plan[Any]) -> Any:
        value: Any = None
        error: InferisError | None = None
        try:
            while True:
                # A step's failure is raised inside the plan, which may handle it.
                step = plan.send(value) if error is None else plan.throw(error)
                error = None
                try:
                    if isinstance(step, Submit):
                        value = self._await(self._send_runs([step], [plan], then_read=True)[0])
                    else:
                        value = self._execute(step)
                except InferisError as exc:
                    error = exc
        except StopIteration as stop:
            return stop.value

    def submit(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int | str | None = None,
        timeout_ms: int | None = None,
        keep_keys: bool = False,
        unit: str | None = None,
    ) -> PendingRun:
        """Enqueue a run and return at once; pass the result to :meth:`wait`.

        A refusal at enqueue (EBUSY, a missing stored input, ...) raises here."""
        future = self.submit_many(
            model, [inputs], version=version, timeout_ms=timeout_ms, keep_keys=keep_keys,
            units=None if unit is None else [unit],
        )[0]
        if future.done() and future.exception() is not None:
            raise future.exception()  # type: ignore[misc]
        return future

    def submit_many(
        self,
        model: str,
        batch: Sequence[Inputs],
        *,
        version: int | str | None = None,
        timeout_ms: int | None = None,
        keep_keys: bool = False,
        units: Sequence[str] | None = None,
    ) -> list[PendingRun]:
        """Enqueue many runs of ``model`` in one round trip per node; one future each
        (``units``: one per run, as ``unit`` of :meth:`run`)."""
        if units is not None and len(units) != len(batch):
            raise ArgumentError(f"units has {len(units)} items for {len(batch)} runs")
        self._perform(self._learn_partition(model))
        plans, steps = [], []
        for index, inputs in enumerate(batch):
            unit = units[index] if units is not None else None
            plan = self._answer(
                self._run_request(model, inputs, version, timeout_ms, keep_keys, unit))
            plans.append(plan)
            steps.append(next(plan))
        return self._send_runs(steps, plans)

    def wait(self, future: PendingRun) -> RunResult:
        """The answer of a submitted run; no answer by its deadline raises NoAnswerError."""
        value: Any = self._await(future)
        try:
            while True:
                value = self._execute(future.plan.send(value))
        except StopIteration as stop:
            return stop.value

    # ---------------------------------------------------------------- transport

    def _execute(self, step: Command | Call | Primaries) -> Any:
        if isinstance(step, Primaries):
            return [str(i) for i in range(len(self._routes.primary_pools()))]
        if isinstance(step, Command):
            args, route, node = step.as_args(), (step.keys[0] if step.keys else ""), None
        else:
            args, route, node = list(step.args), step.route or "", step.node
        reply = self._send([args], step.writes, route=route, node=node)[0]
        if isinstance(reply, Exception):
            raise translate_error(reply)
        return reply

    def _send(
        self,
        batch: list[list[Any]],
        writes: bool,
        runs: Sequence[str] = (),
        *,
        route: str = "",
        node: str | None = None,
    ) -> list[Any]:
        """One round trip to the node of ``route`` (or primary ``node``), with WAIT for
        durable writes; rides over a Redis restart, a failover or a moved slot for a
        while. Resending is safe: runs keep their request ids, and the client takes
        the first answer of each. ``runs`` names the runs the batch enqueues (told
        EUNKNOWN if it fails)."""
        durable = writes and self.wait_replicas > 0
        if durable:
            batch = [*batch, ["WAIT", self.wait_replicas, self.wait_timeout_ms]]
        backoff = Backoff(cap=0.5)
        deadline = time.monotonic() + self.reconnect_window_s
        while True:
            pool = (self._routes.primary_pools()[int(node)] if node
                    else self._routes.pool_for(route))
            conn = None
            try:
                conn = pool.get_connection()
                replies = roundtrip(conn, batch)
                if not any(must_resend(r, self.cluster) for r in replies):
                    break
                self._routes.refresh()  # a slot moved: ask the cluster, send again
            except _DOWN as exc:
                if conn is not None:
                    conn.disconnect()
                if self._closed or time.monotonic() > deadline:
                    raise self._lost(runs, exc) from None
                self._refresh_quietly()
            finally:
                if conn is not None:
                    pool.release(conn)
            if time.monotonic() > deadline:
                raise self._lost(runs, redis.ConnectionError("the slot kept moving"))
            time.sleep(backoff.next())
        if durable:
            acked = replies.pop()
            if isinstance(acked, Exception) or acked < self.wait_replicas:
                raise ReplicationError.shortfall(
                    0 if isinstance(acked, Exception) else acked,
                    self.wait_replicas, self.wait_timeout_ms,
                )
        return replies

    def _lost(self, runs: Sequence[str], exc: Exception) -> ConnectionLostError:
        if runs:
            return OutcomeUnknownError(
                f"request {runs[0]}: the connection to Redis was lost while enqueueing it "
                f"({exc}); it may be queued and answered, but this client stopped waiting",
                runs[0],
            )
        return ConnectionLostError(
            f"Redis could not be reached for {self.reconnect_window_s:g} s: {exc}"
        )

    def _refresh_quietly(self) -> None:
        try:
            self._routes.refresh()
        except (*_DOWN, redis.RedisError):
            pass  # the cluster is between states: the next try asks again

    def _send_runs(
        self, steps: list[Submit], plans: list[Plan[RunResult]], *, then_read: bool = False
    ) -> list[PendingRun]:
        """Enqueue runs; with ``then_read``, and no other thread reading that partition,
        the enqueue and the blocking read of the answer go out in one write on the
        partition's reply connection."""
        futures = [PendingRun(step, plan) for step, plan in zip(steps, plans, strict=True)]
        for step, future in zip(steps, futures, strict=True):
            self._inflight.expect(step.request.rid, _resolver(future))
        for command, owners in enqueue_commands(self._inflight, steps, futures):
            wire = [command.as_args()]
            reply = None
            first = owners[0]
            if then_read and not self.wait_replicas:
                reader = self._reader(first.partition)
                if _take_turn(reader, wait=False):
                    try:
                        replies = self._read_answers(first, reader, wire)
                    finally:
                        _give_turn(reader)
                    reply = None if replies is None else replies[0]
            if reply is None:
                try:
                    rids = [f.rid for f in owners]
                    reply = self._send(wire, True, rids, route=command.keys[0])[0]
                except BaseException as exc:
                    for future in owners:
                        self._inflight.forget(future.rid)
                        if not future.done():
                            future.set_exception(exc)
                    if len(steps) == 1:
                        raise
                    continue
            if isinstance(reply, Exception):
                error = translate_error(reply)
                for future in owners:
                    self._inflight.forget(future.rid)
                    if not future.done():
                        future.set_exception(error)
        return futures

    def _reader(self, partition: int) -> _Reader:
        with self._readers_lock:
            reader = self._readers.get(partition)
            if reader is None:
                reader = self._readers[partition] = _Reader()
            return reader

    def _await(self, future: PendingRun) -> RunResult:
        """Wait for ``future``, reading its partition's answers ourselves when no other
        thread is."""
        reader = self._reader(future.partition)
        try:
            while not future.done():
                if time.monotonic() >= future.deadline:
                    raise NoAnswerError(
                        f"request {future.rid} got no answer within its "
                        f"{future.timeout_ms} ms deadline"
                    )
                if _take_turn(reader, future):
                    try:
                        self._read_answers(future, reader)
                    finally:
                        _give_turn(reader)
        finally:
            self._inflight.forget(future.rid)
        return future.result()

    def _read_answers(
        self, future: PendingRun, reader: _Reader, before: Sequence[list[Any]] = ()
    ) -> list[Any] | None:
        """One blocking read of a partition's reply stream (as its reading thread),
        after the commands ``before`` (their replies are returned; None if Redis was
        away or the slot moved: the caller sends them again, with retries)."""
        stream = self._inflight.reply_stream(future.partition)
        block = max(1, min(REPLY_READ_BLOCK_MS, int((future.deadline - time.monotonic()) * 1000)))
        try:
            if reader.conn is None:
                reader.conn = self._routes.connection_for(stream)
            replies = roundtrip(
                reader.conn, [*before, *self._inflight.read_commands(future.partition, block)]
            )
        except _DOWN:
            replies = None
        if replies is None or any(must_resend(r, self.cluster) for r in replies):
            # Redis is restarting, failing over or moved the slot: the answers wait in it.
            if reader.conn is not None:
                reader.conn.disconnect()
                reader.conn = None
            self._refresh_quietly()
            if before:
                return None
            time.sleep(0.05)
            return []
        read = replies[-1]
        if isinstance(read, Exception):  # e.g. NOPERM: this user may not read its replies
            if before:
                return replies[: len(before)]  # the runs' own replies say what happened
            raise translate_error(read)
        with reader.turn:
            self._inflight.dispatch(read)
        return replies[: len(before)]


def _take_turn(reader: _Reader, future: PendingRun | None = None, wait: bool = True) -> bool:
    """Become the thread that reads ``reader``; False once ``future`` is done (or at
    once when not ``wait``ing and another thread reads)."""
    with reader.turn:
        while future is None or not future.done():
            if not reader.reading:
                reader.reading = True
                return True
            if not wait:
                return False
            assert future is not None
            if time.monotonic() >= future.deadline:
                return False
            reader.turn.wait(future.deadline - time.monotonic())
        return False


def _give_turn(reader: _Reader) -> None:
    with reader.turn:
        reader.reading = False
        reader.turn.notify_all()


def _resolver(future: PendingRun) -> Any:
    def resolve(result: RunResult) -> None:
        if not future.done():
            future.set_result(result)

    return resolve
