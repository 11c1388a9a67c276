"""Dynamic batching: compatible requests run together, answers stay exact."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from inferis.client import Batching, Client, InputError, ModelInfo
from inferis.client.protocol import keys as K
from inferis.client.protocol.entries import Entry, RunRequest
from inferis.engine.backends.base import BackendOptions
from inferis.engine.backends.onnx import OnnxBackend
from inferis.engine.serving.batching import plan, shared_rows
from inferis.engine.serving.request import Request

from .. import models


def _info(batching: Batching) -> ModelInfo:
    return ModelInfo("m", 1, "d" * 64, "onnx", batching=batching)


def _requests(info: ModelInfo, *shapes: tuple[int, ...]) -> list[Request]:
    model = OnnxBackend().load(models.scale_model(2.0, width=None), info, BackendOptions())
    entry = Entry(K.request_stream(0), "1-0", 0, "", [], {})
    out = []
    for i, shape in enumerate(shapes):
        feed = {"X": np.zeros(shape, np.float32)}
        out.append(Request(
            RunRequest(str(i), "m"), entry, info, model, feed, shared_rows(feed), ["Y"]
        ))
    return out


def _sizes(batches: list[list[Request]]) -> list[list[int]]:
    return [[int(r.rid) for r in b] for b in batches]


def test_plan_groups_compatible_shapes_and_respects_limits() -> None:
    info = _info(Batching(4, 0))
    reqs = _requests(info, (1, 3), (1, 5), (2, 3), (1, 3), (1, 5), (1, 3), (5, 3))
    # (1,5) ones batch apart from (1,3) ones; 4 rows at most; 5 rows run alone
    assert _sizes(plan(reqs)) == [[0, 2, 3], [5], [1, 4], [6]]


def test_plan_closes_batches_at_preferred_sizes() -> None:
    info = _info(Batching(8, 0, (2, 4)))
    reqs = _requests(info, *[(1, 3)] * 7)
    assert _sizes(plan(reqs)) == [[0, 1, 2, 3], [4, 5], [6]]  # largest fitting size first


def test_no_batching_without_max_batch_size() -> None:
    reqs = _requests(_info(Batching()), (1, 3), (1, 3))
    assert _sizes(plan(reqs)) == [[0], [1]]


def test_queued_requests_run_in_batches_with_exact_results(
    client: Client, r: redis.Redis, start_workers
) -> None:
    client.modelstore("scale", "onnx", models.scale_model(2.0, width=None), batch=(32, 0))
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((1 + i % 3, 4 + (i % 2))).astype(np.float32) for i in range(120)]
    futures = [client.submit("scale", [x]) for x in inputs]
    assert r.xlen(K.request_stream(0)) == 120  # all queued before any worker runs
    start_workers(1, "--read-count", "128")
    results = [client.wait(f).raise_for_error() for f in futures]
    for x, result in zip(inputs, results, strict=True):
        assert np.array_equal(result.outputs["Y"], x * 2)
    sizes = [res.batch_size for res in results]
    assert max(sizes) > 1 and all(1 <= s <= 32 for s in sizes)


def test_one_failing_request_does_not_fail_its_batch(
    client: Client, r: redis.Redis, start_workers
) -> None:
    client.modelstore("fails", "onnx", models.failing_model(), batch=(16, 0))
    client.modelstore("scale", "onnx", models.scale_model(3.0), batch=(16, 0))
    good = [np.arange(4, dtype=np.float32) + i for i in range(6)]
    futures = [client.submit("fails", [x]) for x in good]
    bad = client.submit("fails", [np.ones(3, np.float32)])
    wrong = client.submit("scale", [np.ones((1, 3), np.float64)])
    fine = client.submit("scale", [np.ones((1, 3), np.float32)])
    start_workers(1)
    for x, future in zip(good, futures, strict=True):
        assert np.array_equal(client.wait(future).raise_for_error().outputs["Y"], x.reshape(2, 2))
    with pytest.raises(Exception, match="fails v1 failed"):
        client.wait(bad).raise_for_error()
    with pytest.raises(InputError):
        client.wait(wrong).raise_for_error()
    assert client.wait(fine).raise_for_error().outputs["Y"].tolist() == [[3.0] * 3]


def test_max_queue_delay_waits_for_a_fuller_batch(client: Client, start_workers) -> None:
    client.modelstore("scale", "onnx", models.scale_model(2.0), batch=(8, 3_000_000))
    start_workers(1)
    first = client.submit("scale", [np.full((1, 3), 1.0, np.float32)])
    time.sleep(0.2)  # the worker now holds the first request, waiting for company
    rest = [client.submit("scale", [np.full((1, 3), float(i), np.float32)]) for i in range(2, 9)]
    results = [client.wait(f).raise_for_error() for f in [first, *rest]]
    assert [float(res.outputs["Y"][0, 0]) for res in results] == [2.0 * i for i in range(1, 9)]
    assert results[0].batch_size > 1  # it did not run alone
