"""A pool of workers per model: a heavy model routed to a partition of its own is
served by the workers started with --models for it, apart from the light models'
workers; with that pool gone its runs wait while the others are still served."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import redis

from inferis.client import Client, NoAnswerError
from inferis.client.protocol import keys
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.engine.local.supervisor import WorkerPool

from ..conftest import WorkerFactory
from ..models import scale_model, slow_model


def _readers(r: redis.Redis, partition: int) -> set[bytes]:
    stream = keys.request_stream(partition)
    try:
        return {c["name"] for c in r.xinfo_consumers(stream, "inferis")}
    except redis.ResponseError:
        return set()


def test_a_heavy_model_is_served_by_a_pool_of_its_own(
    redis_server: EmbeddedRedis, r: redis.Redis, start_workers: WorkerFactory
) -> None:
    url = redis_server.url
    routed = subprocess.run(
        [sys.executable, "-m", "inferis.engine", "model", "--redis", url, "route", "heavy",
         "--partition", "7"], capture_output=True, text=True, timeout=60,
    )
    assert routed.returncode == 0 and "--models heavy" in routed.stdout, routed.stderr
    with Client(url, timeout_ms=3000) as client:
        client.modelstore("light", "onnx", scale_model(2.0))
        client.modelstore("heavy", "onnx", slow_model(steps=20, size=64))
        light_pool = start_workers(1)  # partition 0 only
        x, big = np.ones((1, 3), np.float32), np.ones((64, 64), np.float32)
        assert client.predict("light", {"X": x})["Y"].tolist() == [[2.0, 2.0, 2.0]]
        with pytest.raises(NoAnswerError):  # nobody serves partition 7 yet
            client.predict("heavy", {"X": big})
        heavy_pool = WorkerPool(url, 1, ["--log-level", "WARNING", "--models", "heavy"])
        heavy_pool.start()
        deadline = time.monotonic() + 60
        while not _readers(r, 7) and time.monotonic() < deadline:
            time.sleep(0.05)
        np.testing.assert_array_equal(client.predict("heavy", {"X": big})["Y"], big)
        assert _readers(r, 7) and _readers(r, 7).isdisjoint(_readers(r, 0))
        heavy_pool.stop(grace_s=10)
        assert client.predict("light", {"X": x})["Y"].shape == (1, 3)  # still served
        with pytest.raises(NoAnswerError):  # its pool is gone: it waits for one
            client.predict("heavy", {"X": big})
        client.set_model_partition("heavy", None)  # back with everyone
    with Client(url, timeout_ms=20_000) as client:
        np.testing.assert_array_equal(client.predict("heavy", {"X": big})["Y"], big)
    del light_pool
