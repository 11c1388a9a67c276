"""Per-caller queue bounds: one caller's flood is refused past its own bound while
another caller is still admitted, and the counts go back to zero as requests are
answered."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from inferis.client import ArgumentError, BusyError, Client
from inferis.client.protocol import keys
from inferis.engine.local.embedded import EmbeddedRedis

from ..conftest import WorkerFactory
from ..models import scale_model


def test_a_flooding_caller_is_bounded_and_the_others_are_admitted(
    redis_server: EmbeddedRedis, r: redis.Redis, start_workers: WorkerFactory
) -> None:
    url = redis_server.url
    x = np.ones((1, 3), np.float32)
    with Client(url, caller="flood", timeout_ms=60_000) as flood, \
            Client(url, caller="calm", timeout_ms=60_000) as calm:
        flood.modelstore("scale", "onnx", scale_model(2.0))
        flood.set_max_queue(0, per_caller=20)
        # no worker yet: everything admitted stays queued
        admitted, refused = [], []
        for _ in range(60):
            try:
                admitted.append(flood.submit("scale", {"X": x}))
            except BusyError as exc:
                refused.append(exc)
        assert len(admitted) == 20 and len(refused) == 40
        assert "caller flood" in str(refused[0])
        # a call that would pass the bound is refused whole (a Function is atomic)
        whole = calm.submit_many("scale", [{"X": x}] * 21)
        assert all(isinstance(f.exception(), BusyError) for f in whole)
        waiting = [calm.submit("scale", {"X": x}) for _ in range(5)]  # its own bound
        config = keys.partition_config(0)
        assert int(r.hget(config, "c:flood")) == 20 and int(r.hget(config, "c:calm")) == 5
        start_workers(1)
        for future in [*admitted]:
            np.testing.assert_array_equal(flood.wait(future).outputs["Y"], 2 * x)
        for future in waiting:
            np.testing.assert_array_equal(calm.wait(future).outputs["Y"], 2 * x)
        assert r.hget(config, "c:flood") is None and r.hget(config, "c:calm") is None
        # the flood's room is back
        assert flood.predict("scale", {"X": x})["Y"].shape == (1, 3)
    with pytest.raises(ArgumentError, match="caller"):
        Client(url, caller="no spaces")
