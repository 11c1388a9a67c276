"""Fixtures: real redis-server processes on free loopback ports, real workers.

Nothing here mocks Redis or a backend. Models are built by the tests.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from inferis.client import Client
from inferis.client.protocol import keys as K
from inferis.client.protocol.defaults import GROUP
from inferis.engine.local.embedded import EmbeddedRedis, free_port
from inferis.engine.local.supervisor import WorkerPool
from inferis.lua import ensure_library

from . import models


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private redis-server with AOF (everysec) and the Functions library loaded."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    ensure_library(redis.Redis.from_url(server.url))
    yield server
    server.stop()


@pytest.fixture
def r(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_server.url)
    yield conn
    conn.close()


WorkerFactory = Callable[..., WorkerPool]


@pytest.fixture
def start_workers(redis_server: EmbeddedRedis) -> Iterator[WorkerFactory]:
    """Start worker processes; every pool started is stopped at teardown."""
    pools: list[WorkerPool] = []

    def start(
        count: int = 1, *args: str, url: str | None = None, env: dict[str, str] | None = None
    ) -> WorkerPool:
        conn = redis.Redis.from_url(url or redis_server.url)
        before = consumer_names(conn)
        pool = WorkerPool(
            url or redis_server.url, count, ["--log-level", "WARNING", *args], env=env
        )
        pool.start()
        pools.append(pool)
        wait_for_consumers(conn, before, count)
        conn.close()
        return pool

    yield start
    for pool in pools:
        pool.stop(grace_s=10)


def queued(conn: redis.Redis, partition: int = 0) -> int:
    """Requests enqueued and not yet answered on a partition (the Functions' count)."""
    return int(conn.hget(K.partition_config(partition), "queued") or 0)


def consumer_names(conn: redis.Redis) -> set[bytes]:
    try:
        return {c["name"] for c in conn.xinfo_consumers(K.request_stream(0), GROUP)}
    except redis.ResponseError:  # no stream or group yet
        return set()


def wait_for_consumers(
    conn: redis.Redis, before: set[bytes], count: int, timeout_s: float = 60.0
) -> None:
    """Block until ``count`` consumers not in ``before`` joined (the workers are ready)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(consumer_names(conn) - before) >= count:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{count} worker(s) did not join within {timeout_s}s")


@pytest.fixture
def workers(start_workers: WorkerFactory) -> WorkerPool:
    """Two ordinary workers."""
    return start_workers(2)


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> Iterator[Client]:
    with Client(redis_server.url, timeout_ms=20_000) as c:
        yield c


@pytest.fixture(scope="session")
def iris() -> models.IrisModel:
    return models.iris_model()


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@contextlib.contextmanager
def running_gateway(redis_url: str) -> Iterator[int]:
    """A real ``inferis gateway`` process on a free port (yielded), once it answers
    its liveness probe; stopped at the end, and it must stop cleanly."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "inferis.engine", "gateway", "--redis", redis_url,
         "--port", str(port), "--log-level", "WARNING"],
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=1)
            break
        except OSError:
            assert process.poll() is None, "the gateway exited"
            assert time.monotonic() < deadline, "the gateway did not come up"
            time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(20)
    assert process.returncode in (0, -15), "the gateway did not stop cleanly"
