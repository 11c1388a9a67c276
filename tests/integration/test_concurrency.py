"""Many requests in flight from one asyncio client over one command connection."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import redis

from inferis.client import AsyncClient
from inferis.client.aio import FLUSH_AT
from inferis.client.protocol import keys as K

from .. import models
from ..conftest import queued


async def test_250_requests_in_flight_on_one_connection(
    redis_server, r: redis.Redis, start_workers, iris
) -> None:
    clients_before = len(r.client_list())
    async with AsyncClient(redis_server.url, timeout_ms=60_000) as client:
        await client.modelstore("iris", "onnx", iris.blob)
        rows = [iris.features[i % 150 : i % 150 + 1] for i in range(250)]
        tasks = [asyncio.create_task(client.predict("iris", {"X": row})) for row in rows]
        # No worker yet: all 250 must be enqueued and waiting at the same time.
        while queued(r) < 250:
            await asyncio.sleep(0.01)
        assert client.in_flight == 250
        # they travelled together: one call (one stream entry) per FLUSH_AT runs
        assert r.xlen(K.request_stream(0)) == math.ceil(250 / FLUSH_AT)
        assert len(r.client_list()) - clients_before == 2  # commands + reply reader
        start_workers(2)
        results = await asyncio.gather(*tasks)
    expected = iris.forest.predict(np.concatenate(rows))
    assert [int(out["label"][0]) for out in results] == expected.tolist()
    for row, out in zip(rows, results, strict=True):
        assert np.array_equal(out["probabilities"], iris.reference(row)["probabilities"])
    assert r.xlen(K.request_stream(0)) == 0


async def test_async_tensor_and_model_calls(redis_server, workers) -> None:
    async with AsyncClient(redis_server.url) as client:
        await client.tensorset("{inferis:0}:t", np.arange(4, dtype=np.int32))
        assert (await client.tensorget("{inferis:0}:t")).tolist() == [0, 1, 2, 3]
        await client.modelstore("s", "onnx", models.scale_model(4.0))
        assert (await client.modelget("s")).version == 1
        assert await client.modellist() == ["s"]
        out = await client.predict("s", [np.ones((2, 3), np.float32)])
        assert out["Y"].tolist() == [[4.0] * 3] * 2
        assert await client.modeldel("s") == 1
