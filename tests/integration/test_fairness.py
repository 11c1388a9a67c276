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

from ..conftest import WorkerFactory, queued
from ..models import scale_model, slow_model


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


BACKLOG = 120


def _slow_then_fast(url: str, r: redis.Redis, start_workers: WorkerFactory, *args: str,
                    fast_model: str) -> int:
    """Queue a slow backlog from one caller, then one request from another; start a
    worker and return how much of the backlog was still queued when the late request
    was answered."""
    slow_x = np.ones((128, 128), np.float32)
    x = np.ones((1, 3), np.float32)
    with Client(url, caller="backlog", timeout_ms=120_000) as backlog, \
            Client(url, caller="late", timeout_ms=120_000) as late:
        backlog.modelstore("slow", "onnx", slow_model(steps=40, size=128))
        backlog.modelstore("scale", "onnx", scale_model(2.0))
        futures = [backlog.submit("slow", {"X": slow_x}) for _ in range(BACKLOG)]
        if fast_model == "slow":
            mine = late.submit("slow", {"X": slow_x})
        else:
            mine = late.submit(fast_model, {"X": x})
        start_workers(1, *args)
        late.wait(mine).raise_for_error()
        still_queued = queued(r)
        for future in futures:
            np.testing.assert_array_equal(backlog.wait(future).outputs["Y"], slow_x)
    return still_queued


@pytest.mark.parametrize("read_ahead", ["4096", "1"], ids=["in-turn", "stream-order"])
@pytest.mark.parametrize("late_model", ["scale", "slow"],
                         ids=["a-fast-model-behind-a-slow-backlog",
                              "another-caller-of-the-same-model-behind-a-flood"])
def test_a_backlog_does_not_hold_up_the_others(
    redis_server: EmbeddedRedis, r: redis.Redis, start_workers: WorkerFactory, read_ahead: str,
    late_model: str,
) -> None:
    left = _slow_then_fast(
        redis_server.url, r, start_workers, "--read-ahead", read_ahead, fast_model=late_model
    )
    if read_ahead == "1":  # the control: in stream order, the backlog runs first
        assert left < BACKLOG // 2
    else:
        assert left > BACKLOG // 2
