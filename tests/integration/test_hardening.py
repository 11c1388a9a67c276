"""What a hostile-input and fault probe found, each kept as a test: a crafted
tensor among good requests, Functions that would hold Redis, writes refused
half way, archive bombs, ambiguous and raw errors, leftovers."""

from __future__ import annotations

import asyncio
import io
import signal
import time
import zipfile
from hashlib import sha256
from pathlib import Path

import msgpack
import numpy as np
import pytest
import redis

from inferis.client import (
    ArgumentError,
    AsyncClient,
    BackendError,
    Client,
    ConnectionLostError,
    OutcomeUnknownError,
    OutOfMemoryError,
    PermissionDeniedError,
    Ref,
    TensorError,
)
from inferis.client.protocol import keys as K
from inferis.client.protocol.defaults import GROUP, MAX_LUA_VALUES
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.lua import ensure_library

from ..conftest import consumer_names

TAG = K.partition_tag(0)


def _crafted(dims: list[int]) -> bytes:
    """A raw value with a shape the Functions refuse, written around them with SET."""
    header = msgpack.packb(["float32", dims])
    value = b"INFT\x01\x00" + len(header).to_bytes(2, "little") + header
    return value + b"\0" * ((-len(value)) % 16)


def test_a_crafted_tensor_fails_alone_among_good_requests(
    client: Client, workers, r: redis.Redis, iris
) -> None:
    client.modelstore("iris", "onnx", iris.blob)
    r.set(f"{TAG}:crafted", _crafted([0, 2**62]))
    with pytest.raises(redis.ResponseError, match="ETENSOR"):  # the Functions refuse it
        r.fcall("TENSORSET", 1, f"{TAG}:again", "RAW", _crafted([0, 2**62]))
    # 30 good requests and the crafted one in one call, one entry, one batch
    batch = [{"X": iris.features[i : i + 1]} for i in range(30)]
    batch.insert(12, {"X": Ref(f"{TAG}:crafted")})
    results = [client.wait(f) for f in client.submit_many("iris", batch)]
    bad = results.pop(12)
    assert isinstance(bad.error, TensorError) and "exceeds the limit" in bad.error.message
    labels = [int(res.raise_for_error().outputs["label"][0]) for res in results]
    assert labels == iris.forest.predict(iris.features[:30]).tolist()
    # and the same through plain MODELRUN calls sent in one MULTI
    pipe = r.pipeline(transaction=True)
    for i in range(30):
        pipe.fcall("MODELRUN", 2, K.request_stream(0), f"{TAG}:x{i}", "MODEL", "iris",
                   "INPUTS", 1, "DATA", 1, _encoded(iris.features[i : i + 1]), "ID", f"g{i}")
    pipe.fcall("MODELRUN", 2, K.request_stream(0), f"{TAG}:crafted", "MODEL", "iris",
               "INPUTS", 1, "ID", "bad")
    replies = pipe.execute(raise_on_error=False)
    assert isinstance(replies[-1], redis.ResponseError) and "ETENSOR" in str(replies[-1])
    for i in range(30):
        _, line = r.blpop([f"{TAG}:r:g{i}:done"], timeout=20)
        assert b'"status": "ok"' in line
    assert all(p.poll() is None for p in workers.processes)


def _encoded(array: np.ndarray) -> bytes:
    from inferis.client import encode_tensor

    return encode_tensor(array)


def test_functions_refuse_before_building_what_would_hold_redis(r: redis.Redis) -> None:
    peak = int(r.info("memory")["used_memory_peak"])
    with pytest.raises(redis.ResponseError, match="ETENSOR a float32 tensor of 268435456"):
        r.fcall("TENSORSET", 1, f"{TAG}:z", "FLOAT", 16384, 16384)  # 1 GiB of zeros
    with pytest.raises(redis.ResponseError, match="zero-filled up to 16777216"):
        r.fcall("TENSORSET", 1, f"{TAG}:z", "FLOAT", 4096, 2048)  # 32 MiB: allowed size
    assert int(r.info("memory")["used_memory_peak"]) - peak < 8 * 1024 * 1024  # never built
    too_many = MAX_LUA_VALUES + 1
    with pytest.raises(redis.ResponseError, match="VALUES takes at most 262144"):
        r.fcall("TENSORSET", 1, f"{TAG}:v", "INT8", too_many, "VALUES", *([1] * too_many))
    r.fcall("TENSORSET", 1, f"{TAG}:big", "INT8", too_many, "BLOB", b"\1" * too_many)
    with pytest.raises(redis.ResponseError, match="VALUES returns at most 262144"):
        r.fcall("TENSORGET", 1, f"{TAG}:big", "VALUES")
    assert r.fcall("TENSORGET", 1, f"{TAG}:big", "META")[3] == [too_many]


def test_a_refused_notice_stores_nothing(redis_server, r: redis.Redis, iris) -> None:
    """A user who may write keys but not publish: MODELSTORE writes nothing, not half."""
    r.execute_command("ACL", "SETUSER", "nochannel", "on", ">pw", "~*", "+@all", "resetchannels")
    limited = Client(redis_server.url.replace("redis://", "redis://nochannel:pw@"))
    with pytest.raises(PermissionDeniedError, match="publish the notice"):
        limited.modelstore("iris", "onnx", iris.blob)
    assert r.keys("inferis:{iris}:*") == []
    admin = Client(redis_server.url)
    assert admin.modelstore("iris", "onnx", iris.blob).created
    with pytest.raises(PermissionDeniedError, match="publish the notice"):
        limited.modeldel("iris")
    assert admin.modelversions("iris") == [1]
    limited.close()
    admin.close()


def _zip_bomb(member: str, size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, b"\0" * size)
    return buffer.getvalue()


def test_archive_bombs_are_refused_by_the_worker(client: Client, start_workers) -> None:
    start_workers(1, "--max-unpacked-mb", "8")
    bomb = _zip_bomb("archive/data/0", 64 * 1024 * 1024)
    client.modelstore("bomb", "torch", bomb, format="torchscript")
    with pytest.raises(BackendError, match="unpacks to 67108864 bytes"):
        client.predict("bomb", [np.ones(3, np.float32)])
    client.modelstore("skbomb", "sklearn", _zip_bomb("schema.json", 64 * 1024 * 1024))
    with pytest.raises(BackendError, match="skops file unpacks to"):
        client.predict("skbomb", {"X": np.ones((1, 3))})


def test_redis_refusals_reach_callers_as_inferis_errors(tmp_path: Path, iris) -> None:
    server = EmbeddedRedis(tmp_path / "oom", appendonly=False,
                           extra_config={"maxmemory": "16mb", "maxmemory-policy": "noeviction"})
    server.start()
    try:
        ensure_library(redis.Redis.from_url(server.url))
        with Client(server.url) as client:
            with pytest.raises(OutOfMemoryError, match="EOOM Redis refused it: OOM"):
                for i in range(40):  # 2 MiB each: past maxmemory, writes are refused
                    client.tensorset(f"{TAG}:fill{i}", np.zeros((512, 1024), np.float32))
            redis.Redis.from_url(server.url).hset(f"{TAG}:h", "a", "b")
            with pytest.raises(ArgumentError, match="WRONGTYPE"):
                client.tensorget(f"{TAG}:h")
            with pytest.raises(ArgumentError, match="ttl_ms must be an integer"):
                Client(server.url, ttl_ms=10**13)
    finally:
        server.stop()


async def test_a_run_cut_off_by_a_lost_connection_says_its_outcome_is_unknown(
    tmp_path: Path, iris
) -> None:
    server = EmbeddedRedis(tmp_path / "gone")
    server.start()
    ensure_library(redis.Redis.from_url(server.url))
    async with AsyncClient(server.url, reconnect_window_s=0.5) as client:
        await client.modelstore("iris", "onnx", iris.blob)
        server.kill()  # nothing answers on that port any more
        with pytest.raises(OutcomeUnknownError) as caught:
            await client.predict("iris", {"X": iris.features[:1]})
        assert caught.value.code == "EUNKNOWN" and "." in caught.value.rid
        assert caught.value.rid in str(caught.value)
        with pytest.raises(ConnectionLostError, match="could not be reached"):
            await client.tensorset(f"{TAG}:t", np.ones(2))
    sync = Client(server.url, reconnect_window_s=0.3)
    with pytest.raises(OutcomeUnknownError, match="may be queued"):
        sync.predict("iris", {"X": iris.features[:1]})
    sync.close()
    await asyncio.sleep(0)


def test_dead_consumers_are_forgotten(r: redis.Redis, start_workers, client: Client, iris) -> None:
    client.modelstore("iris", "onnx", iris.blob)
    doomed = start_workers(3, "--claim-idle-ms", "1000")
    for process in doomed.processes:
        process.send_signal(signal.SIGKILL)
        process.wait()
    dead = consumer_names(r)
    assert len(dead) == 3
    start_workers(1, "--claim-idle-ms", "1000")
    deadline = time.monotonic() + 30
    while consumer_names(r) & dead and time.monotonic() < deadline:
        time.sleep(0.2)
    left = r.xinfo_consumers(K.request_stream(0), GROUP)
    assert len(left) == 1 and not ({c["name"] for c in left} & dead)
    assert client.predict("iris", {"X": iris.features[:2]})["label"].shape == (2,)


def test_raw_digest_of_a_refused_store_is_not_committed(r: redis.Redis, iris) -> None:
    """MODELSTORE's checks come first: a store refused for its options leaves no blob."""
    with pytest.raises(redis.ResponseError, match="EARGS BATCH max size must be a decimal"):
        r.fcall("MODELSTORE", 1, "iris", "BACKEND", "onnx", "DIGEST",
                sha256(iris.blob).hexdigest(), "BATCH", "0x10", "5", "BLOB", iris.blob)
    assert r.keys("inferis:{iris}:*") == []


def test_a_changed_library_is_replaced_even_under_the_same_version(r: redis.Redis) -> None:
    """A library edited without a new LIB_VERSION (a stale data directory) is still
    replaced: ensure_library compares the code, not only the version."""
    from inferis.lua import library_source

    prune = "redis.register_function{function_name = '_INFERIS_PRUNE'"
    stale = library_source().replace(prune, "-- an older build without prune\n--" + prune)
    r.function_load(stale, replace=True)
    with pytest.raises(redis.ResponseError, match="Function not found"):
        r.fcall("_INFERIS_PRUNE", 1, K.request_stream(0), 1)
    assert ensure_library(r) is True
    assert r.fcall("_INFERIS_PRUNE", 1, K.request_stream(0), 1) == []
    assert ensure_library(r) is False
