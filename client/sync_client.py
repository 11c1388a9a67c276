"""The blocking client. Same core as the asyncio client; a reader thread routes replies.

``submit`` enqueues without waiting and returns a future, so one thread can
keep many requests in flight; ``predict`` is submit-and-wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import core
from .base import ClientBase
from .connection import sync_connection
from .core import Command, Inputs, ModelInfo, RunResult, StoredVersion
from .errors import NoAnswerError
from .tensor import decode_tensor, encode_tensor


class Client(ClientBase):
    """Blocking client for inferis; method names follow redisai-py where they can."""

    def __init__(
        self,
        url: str = "redis://localhost:6379",
        *,
        partition: int = 0,
        timeout_ms: int = core.DEFAULT_TIMEOUT_MS,
        ttl_ms: int = core.DEFAULT_TTL_MS,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        connection: redis.Redis | None = None,
    ) -> None:
        super().__init__(
            url, partition=partition, timeout_ms=timeout_ms, ttl_ms=ttl_ms,
            wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms,
        )
        self._redis = connection or sync_connection(url)
        self._reader: threading.Thread | None = None
        self._reader_lock = threading.Lock()
        self._closed = threading.Event()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._redis.close()

    # ---------------------------------------------------------------- transport

    def _fcall(self, command: Command) -> Any:
        try:
            if not (self.wait_replicas and command.writes):
                return self._redis.execute_command(*command.as_args())
            pipe = self._redis.pipeline(transaction=False)
            pipe.execute_command(*command.as_args())
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            reply, acked = pipe.execute()
        except redis.ResponseError as exc:
            raise core.translate_error(exc) from None
        if acked < self.wait_replicas:
            raise core.replication_error(acked, self.wait_replicas, self.wait_timeout_ms)
        return reply

    def _ensure_reader(self) -> None:
        with self._reader_lock:
            if self._reader is None or not self._reader.is_alive():
                self._reader = threading.Thread(
                    target=self._read_loop, name="inferis-replies", daemon=True
                )
                self._reader.start()

    def _read_loop(self) -> None:
        conn = sync_connection(self._url)
        backoff = 0.05
        try:
            while not self._closed.is_set():
                try:
                    pipe = conn.pipeline(transaction=False)
                    for cmd in self._router.read_commands():
                        pipe.execute_command(*cmd)
                    self._router.dispatch(pipe.execute()[-1])
                    backoff = 0.05
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    time.sleep(backoff)  # Redis is restarting: the replies wait in it
                    backoff = min(backoff * 2, 1.0)
        finally:
            conn.close()

    # ---------------------------------------------------------------- runs

    def _submit(self, command: Command, rid: str, timeout_ms: int) -> Future[RunResult]:
        future: Future[RunResult] = Future()
        future.timeout_ms = timeout_ms  # type: ignore[attr-defined]
        future.rid = rid  # type: ignore[attr-defined]

        def resolve(result: RunResult) -> None:
            if not future.done():
                future.set_result(result)

        self._router.expect(rid, resolve)
        self._ensure_reader()
        try:
            self._fcall(command)
        except BaseException:
            self._router.forget(rid)
            raise
        return future

    def wait(self, future: Future[RunResult]) -> RunResult:
        """Wait for a submitted run; a missed deadline raises DeadlineExceeded."""
        timeout_ms: int = future.timeout_ms  # type: ignore[attr-defined]
        rid: str = future.rid  # type: ignore[attr-defined]
        try:
            result = future.result(timeout=timeout_ms / 1000 + core.REPLY_GRACE_S)
        except FutureTimeout:
            raise NoAnswerError(
                f"request {rid} got no answer within its {timeout_ms} ms deadline"
            ) from None
        finally:
            self._router.forget(rid)
        if result.missing and result.error is None:
            values = self._redis.mget([result.output_keys[n] for n in result.missing])
            core.fill_missing(result, values)
        return result

    def submit(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int | str | None = None,
        timeout_ms: int | None = None,
        keep_keys: bool = False,
    ) -> Future[RunResult]:
        """Enqueue a run and return at once; pass the future to :meth:`wait`."""
        command, rid, timeout = self._predict_command(
            model, inputs, version, timeout_ms, keep_keys
        )
        return self._submit(command, rid, timeout)

    def run(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int | str | None = None,
        timeout_ms: int | None = None,
        keep_keys: bool = False,
    ) -> RunResult:
        """Run and wait. ``keep_keys``: also keep inputs and outputs as keys (for the TTL)."""
        return self.wait(
            self.submit(model, inputs, version=version, timeout_ms=timeout_ms, keep_keys=keep_keys)
        )

    def predict(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int | str | None = None,
        timeout_ms: int | None = None,
        keep_keys: bool = False,
    ) -> dict[str, np.ndarray]:
        """One call: inputs in, output arrays by name out; errors raise."""
        result = self.run(
            model, inputs, version=version, timeout_ms=timeout_ms, keep_keys=keep_keys
        )
        return result.raise_for_error().outputs

    def modelexecute(
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
        return self.wait(self._submit(command, rid, timeout)).raise_for_error()

    # ---------------------------------------------------------------- tensors

    def tensorset(self, key: str, tensor: Any) -> None:
        self._fcall(Command("TENSORSET", [key], ["RAW", encode_tensor(tensor)]))

    def tensorget(self, key: str) -> np.ndarray:
        return decode_tensor(self._fcall(Command("TENSORGET", [key], [])))

    # ---------------------------------------------------------------- models

    def modelstore(self, name: str, backend: str, data: bytes, **options: Any) -> StoredVersion:
        """Store a new immutable version (identical content returns the existing one)."""
        reply: Any = None
        for command in core.build_modelstore(name, backend, data, **options):
            reply = self._fcall(command)
        return core.parse_stored(name, reply)

    def pipelinestore(
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
        return self.modelstore(name, "pipeline", blob, format="json", tags=tags)

    def modelget(
        self, name: str, version: int | str | None = None, *, blob: bool = False
    ) -> ModelInfo | tuple[ModelInfo, bytes]:
        reply = self._fcall(self._modelget_command(name, version, blob))
        return self._modelget_result(reply, blob)

    def modelversions(self, name: str) -> list[int]:
        return [int(v) for v in self._fcall(Command("MODELGET", [name], ["VERSIONS"]))]

    def modeldel(self, name: str, version: int | str | None = None) -> int:
        return int(self._fcall(self._modeldel_command(name, version)))

    def modelstats(self, name: str) -> dict[str, int]:
        """Counters workers flush every few seconds: requests, errors, run_us, queue_us."""
        return self._stats(self._redis.hgetall(core.keys.model_key(name, "stats")))

    def modellist(self) -> list[str]:
        found = self._redis.scan_iter(match="inferis:{*}:latest", count=1000)
        return sorted({core.model_name_of(k) for k in found})

    def set_max_queue(self, depth: int) -> None:
        """Refuse MODELRUN with EBUSY while this many requests are queued (0: no bound)."""
        self._redis.hset(self._config_key(), "max_queue", depth)
