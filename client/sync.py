"""The blocking client: the operations of operations.py over blocking connections.

Commands go out on a connection taken from the pool for the call. Answers come
back on one reply connection that is read by whichever waiting thread gets
there first (the others wait on a condition), so a single-threaded caller
reads its own answer without a thread hand-off. ``submit`` enqueues without
waiting and returns a future, so one thread can keep many requests in flight;
``submit_many`` sends many runs in one command.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import redis

from .connection import roundtrip, sync_pool
from .operations import Call, Inputs, Operations, Plan, Submit, enqueue_commands
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

_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


class PendingRun(Future):  # type: ignore[type-arg]
    """A submitted run: pass it to :meth:`Client.wait`."""

    def __init__(self, submit: Submit, plan: Plan[RunResult]) -> None:
        super().__init__()
        self.rid = submit.request.rid
        self.timeout_ms = submit.request.timeout_ms
        self.deadline = time.monotonic() + self.timeout_ms / 1000 + REPLY_GRACE_S
        self.plan = plan


class Client(Operations):
    """Blocking client for inferis; method names follow redisai-py where they can."""

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
        # The reply connection blocks in XREAD: its socket waits longer than that.
        self._pool = sync_pool(url, socket_timeout=REPLY_READ_BLOCK_MS / 1000 + 10)
        self._reader: Any = None
        self._reading = False
        self._turn = threading.Condition()
        self._closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        with self._turn:
            if self._reader is not None and not self._reading:
                self._reader.disconnect()
        self._pool.disconnect()

    # ---------------------------------------------------------------- plans

    def _perform(self, plan: Plan[Any]) -> Any:
        value: Any = None
        try:
            while True:
                step = plan.send(value)
                if isinstance(step, Submit):
                    value = self._await(self._send_runs([step], [plan], then_read=True)[0])
                else:
                    value = self._execute(step)
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
    ) -> PendingRun:
        """Enqueue a run and return at once; pass the result to :meth:`wait`.

        A refusal at enqueue (EBUSY, a missing stored input, ...) raises here."""
        future = self.submit_many(
            model, [inputs], version=version, timeout_ms=timeout_ms, keep_keys=keep_keys
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
    ) -> list[PendingRun]:
        """Enqueue many runs of ``model`` in one round trip; one future each."""
        plans, steps = [], []
        for inputs in batch:
            plan = self._answer(self._run_request(model, inputs, version, timeout_ms, keep_keys))
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

    def _execute(self, step: Command | Call) -> Any:
        args = step.as_args() if isinstance(step, Command) else list(step.args)
        reply = self._send([args], step.writes)[0]
        if isinstance(reply, Exception):
            raise translate_error(reply)
        return reply

    def _send(self, batch: list[list[Any]], writes: bool, runs: Sequence[str] = ()) -> list[Any]:
        """One round trip on a pooled connection (with WAIT for durable writes);
        rides over a Redis restart for a while. Resending is safe: runs keep
        their request ids, and the client takes the first answer of each.
        ``runs`` names the runs the batch enqueues (told EUNKNOWN if it fails)."""
        durable = writes and self.wait_replicas > 0
        if durable:
            batch = [*batch, ["WAIT", self.wait_replicas, self.wait_timeout_ms]]
        backoff, deadline = Backoff(cap=0.5), time.monotonic() + self.reconnect_window_s
        while True:
            conn = None
            try:
                conn = self._pool.get_connection()
                replies = roundtrip(conn, batch)
                break
            except _DOWN as exc:
                if conn is not None:
                    conn.disconnect()
                if self._closed or time.monotonic() > deadline:
                    if runs:
                        raise OutcomeUnknownError(
                            f"request {runs[0]}: the connection to Redis was lost while "
                            f"enqueueing it ({exc}); it may be queued and answered, but this "
                            "client stopped waiting", runs[0],
                        ) from None
                    raise ConnectionLostError(
                        f"Redis could not be reached for {self.reconnect_window_s:g} s: {exc}"
                    ) from None
                time.sleep(backoff.next())
            finally:
                if conn is not None:
                    self._pool.release(conn)
        if durable:
            acked = replies.pop()
            if isinstance(acked, Exception) or acked < self.wait_replicas:
                raise ReplicationError.shortfall(
                    0 if isinstance(acked, Exception) else acked,
                    self.wait_replicas, self.wait_timeout_ms,
                )
        return replies

    def _send_runs(
        self, steps: list[Submit], plans: list[Plan[RunResult]], *, then_read: bool = False
    ) -> list[PendingRun]:
        """Enqueue runs; with ``then_read``, and no other thread reading, the enqueue and
        the blocking read of the answer go out in one write on the reply connection."""
        futures = [PendingRun(step, plan) for step, plan in zip(steps, plans, strict=True)]
        for step, future in zip(steps, futures, strict=True):
            self._inflight.expect(step.request.rid, _resolver(future))
        calls = enqueue_commands(self._inflight, steps, futures)
        wire = [command.as_args() for command, _ in calls]
        replies = None
        if then_read and not self.wait_replicas and self._take_turn(wait=False):
            try:
                replies = self._read_answers(futures[0], wire)
            finally:
                self._give_turn()
        if replies is None:
            try:
                replies = self._send(wire, True, [f.rid for f in futures])
            except BaseException:
                for future in futures:
                    self._inflight.forget(future.rid)
                raise
        for (_, owners), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                error = translate_error(reply)
                for future in owners:
                    self._inflight.forget(future.rid)
                    if not future.done():
                        future.set_exception(error)
        return futures

    def _take_turn(self, future: PendingRun | None = None, wait: bool = True) -> bool:
        """Become the thread that reads answers; False once ``future`` is done (or at
        once when not ``wait``ing and another thread reads)."""
        with self._turn:
            while future is None or not future.done():
                if not self._reading:
                    self._reading = True
                    return True
                if not wait:
                    return False
                assert future is not None
                if time.monotonic() >= future.deadline:
                    return False
                self._turn.wait(future.deadline - time.monotonic())
            return False

    def _give_turn(self) -> None:
        with self._turn:
            self._reading = False
            self._turn.notify_all()

    def _await(self, future: PendingRun) -> RunResult:
        """Wait for ``future``, reading answers ourselves when no other thread is."""
        try:
            while not future.done():
                if time.monotonic() >= future.deadline:
                    raise NoAnswerError(
                        f"request {future.rid} got no answer within its "
                        f"{future.timeout_ms} ms deadline"
                    )
                if self._take_turn(future):
                    try:
                        self._read_answers(future)
                    finally:
                        self._give_turn()
        finally:
            self._inflight.forget(future.rid)
        return future.result()

    def _read_answers(self, future: PendingRun, before: list[list[Any]] = ()) -> list[Any] | None:
        """One blocking read of the reply streams (as the reading thread), after the
        commands ``before`` (their replies are returned; None if Redis was away)."""
        if self._reader is None:
            self._reader = self._pool.make_connection()
        block = max(1, min(REPLY_READ_BLOCK_MS, int((future.deadline - time.monotonic()) * 1000)))
        try:
            replies = roundtrip(self._reader, [*before, *self._inflight.read_commands(block)])
        except _DOWN:
            self._reader.disconnect()  # Redis is restarting: the answers wait in it
            if before:
                return None  # the caller resends them, with retries
            time.sleep(0.05)
            return []
        with self._turn:
            self._inflight.dispatch(replies[-1])
        return replies[: len(before)]


def _resolver(future: PendingRun) -> Any:
    def resolve(result: RunResult) -> None:
        if not future.done():
            future.set_result(result)

    return resolve
