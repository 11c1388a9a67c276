"""Workers and Redis die; every request is still answered (slow tests)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import redis

from inferis.client import AsyncClient, Client, DeadLetteredError, decode_tensor
from inferis.client.protocol import keys as K
from inferis.client.protocol.defaults import GROUP
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.engine.local.supervisor import WorkerPool
from inferis.lua import ensure_library

from .. import models
from ..conftest import consumer_names, queued, wait_for_consumers

pytestmark = pytest.mark.slow

STREAM = K.request_stream(0)


def _wait_until_delivered(r: redis.Redis, timeout_s: float = 30.0) -> bytes:
    """Wait until a worker has read the request (it is pending); return its consumer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pending = r.xpending(STREAM, GROUP)
        if pending["pending"]:
            return pending["consumers"][0]["name"]
        time.sleep(0.02)
    raise TimeoutError("no worker picked the request up")


def test_a_request_of_a_killed_worker_is_served_by_another(
    client: Client, r: redis.Redis, start_workers
) -> None:
    client.modelstore("slow", "onnx", models.slow_model())
    first = start_workers(1, "--claim-idle-ms", "1000")
    x = np.random.default_rng(3).standard_normal((768, 768)).astype(np.float32)
    future = client.submit("slow", [x], timeout_ms=120_000)
    victim = _wait_until_delivered(r)
    time.sleep(0.3)  # it is now inside the backend
    first.processes[0].send_signal(signal.SIGKILL)
    first.processes[0].wait()
    assert not future.done()
    start_workers(1, "--claim-idle-ms", "1000")
    result = client.wait(future).raise_for_error()
    assert np.array_equal(result.outputs["Y"], x)  # identity chain: exact
    assert r.xpending(STREAM, GROUP)["pending"] == 0
    dead = [c for c in r.xinfo_consumers(STREAM, GROUP) if c["name"] == victim]
    assert dead and dead[0]["pending"] == 0


def test_a_request_that_keeps_killing_workers_is_dead_lettered(
    client: Client, r: redis.Redis, start_workers
) -> None:
    client.modelstore("slow", "onnx", models.slow_model())
    first = start_workers(1, "--claim-idle-ms", "1000", "--max-deliveries", "1")
    future = client.submit("slow", [np.ones((768, 768), np.float32)], timeout_ms=120_000)
    _wait_until_delivered(r)
    first.processes[0].send_signal(signal.SIGKILL)
    first.processes[0].wait()
    start_workers(1, "--claim-idle-ms", "1000", "--max-deliveries", "1")
    with pytest.raises(DeadLetteredError, match="delivered 2 times"):
        client.wait(future).raise_for_error()
    dead = r.xrange(K.deadletter_stream(0))
    assert len(dead) == 1 and dead[0][1][b"reason"] == b"poison"
    kept = msgpack.unpackb(dead[0][1][b"req.q"], raw=True)  # kept for replay
    assert [record[b"model"] for record in kept] == [b"slow"]
    assert r.xpending(STREAM, GROUP)["pending"] == 0


def test_sigterm_finishes_the_run_in_hand(client: Client, r: redis.Redis, start_workers) -> None:
    client.modelstore("slow", "onnx", models.slow_model(steps=60))
    pool = start_workers(1)
    x = np.eye(768, dtype=np.float32) * 2
    future = client.submit("slow", [x], timeout_ms=120_000)
    _wait_until_delivered(r)
    pool.processes[0].send_signal(signal.SIGTERM)
    assert pool.processes[0].wait(60) == 0
    assert np.array_equal(client.wait(future).raise_for_error().outputs["Y"], x)


async def test_requests_enqueued_before_a_redis_crash_are_answered_after_it(
    tmp_path: Path, iris
) -> None:
    server = EmbeddedRedis(tmp_path / "aof", appendfsync="always")
    server.start()
    r = redis.Redis.from_url(server.url)
    ensure_library(r)
    pools: list[WorkerPool] = []
    sync_client = Client(server.url, timeout_ms=60_000)
    try:
        async with AsyncClient(server.url, timeout_ms=120_000) as client:
            await client.modelstore("iris", "onnx", iris.blob)
            rows = [iris.features[i : i + 1] for i in range(0, 150, 3)]
            tasks = [asyncio.create_task(client.predict("iris", {"X": x})) for x in rows]
            while queued(r) < len(rows):
                await asyncio.sleep(0.01)
            server.kill()  # SIGKILL: only the AOF survives
            restarted = EmbeddedRedis(tmp_path / "aof", port=server.port, appendfsync="always")
            restarted.start()
            server = restarted
            assert queued(r) == len(rows)
            before = consumer_names(r)
            pool = WorkerPool(server.url, 2, ["--log-level", "WARNING"])
            pool.start()
            pools.append(pool)
            wait_for_consumers(r, before, 2)
            results = await asyncio.gather(*tasks)
            labels = [int(out["label"][0]) for out in results]
            assert labels == iris.forest.predict(np.concatenate(rows)).tolist()
            assert sync_client.predict("iris", {"X": iris.features[:2]})["label"].shape == (2,)

            # The workers outlive a second crash, reconnect and keep serving.
            server.kill()
            await asyncio.sleep(1.0)
            restarted = EmbeddedRedis(tmp_path / "aof", port=server.port, appendfsync="always")
            restarted.start()
            server = restarted
            out = await client.predict("iris", {"X": iris.features[:5]})
            assert np.array_equal(out["label"], iris.forest.predict(iris.features[:5]))
            out = sync_client.predict("iris", {"X": iris.features[5:9]})
            assert np.array_equal(out["label"], iris.forest.predict(iris.features[5:9]))
            assert all(p.poll() is None for p in pool.processes)
    finally:
        sync_client.close()
        for pool in pools:
            pool.stop()
        server.stop()


async def test_a_resumed_worker_does_not_answer_twice(
    redis_server, r: redis.Redis, start_workers
) -> None:
    """Worker A is frozen mid-run; B reclaims and answers; A wakes and finishes too.
    The caller sees exactly one answer and the outputs are B's (identical) ones."""
    async with AsyncClient(redis_server.url, timeout_ms=120_000) as client:
        await client.modelstore("slow", "onnx", models.slow_model())
        first = start_workers(1, "--claim-idle-ms", "1000")
        x = np.random.default_rng(9).standard_normal((768, 768)).astype(np.float32)
        task = asyncio.create_task(client.run("slow", [x]))
        await asyncio.to_thread(_wait_until_delivered, r)
        await asyncio.sleep(0.3)
        frozen = first.processes[0]
        frozen.send_signal(signal.SIGSTOP)
        start_workers(1, "--claim-idle-ms", "1000")
        result = (await task).raise_for_error()
        assert np.array_equal(result.outputs["Y"], x)
        calls_before = _fcalls(r)
        frozen.send_signal(signal.SIGCONT)  # A finishes its run and tries to answer
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _fcalls(r) == calls_before:
            await asyncio.sleep(0.1)
        assert _fcalls(r) > calls_before  # A did call _INFERIS_COMPLETE ...
        await asyncio.sleep(0.5)
        assert client.unmatched_answers == 0  # ... which wrote no second reply
        assert np.array_equal(decode_tensor(r.get(result.output_keys["Y"])), x)
        assert r.xpending(STREAM, GROUP)["pending"] == 0


def _fcalls(r: redis.Redis) -> int:
    return int(r.info("commandstats")["cmdstat_fcall"]["calls"])
