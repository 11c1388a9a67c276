"""The prediction cache against real Redis and real workers: hits equal fresh runs and
skip the model, versions never share answers, errors and late requests are never
served from it, and each model's entries per partition stay within their bound."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from inferis.client import BackendError, Client, Ref, encode_tensor
from inferis.client.protocol import keys as K
from inferis.engine.cli.main import main
from inferis.engine.local.embedded import free_port

from .. import models

MINUTE_MS = 60_000


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _eventually(predicate: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _entries(r: redis.Redis, model: str) -> list[bytes]:
    index = K.prediction_index(K.partition_tag(0), model)
    return [k for k in r.scan_iter(f"{index}:*", count=1000)]


def test_a_repeated_request_is_answered_from_the_cache_without_running(
    client: Client, start_workers, iris
) -> None:
    port = free_port()
    start_workers(1, "--metrics-port", str(port))
    client.modelstore("iris", "onnx", iris.blob, cache_ttl_ms=MINUTE_MS)
    x = iris.features[:5]
    first = client.run("iris", {"X": x}).raise_for_error()
    second = client.run("iris", {"X": x}).raise_for_error()
    positional = client.run("iris", [x]).raise_for_error()  # the same tensors, bound by position
    other = client.run("iris", {"X": iris.features[5:10]}).raise_for_error()

    assert (first.cached, second.cached, positional.cached, other.cached) == (
        False, True, True, False)
    expected = iris.reference(x)
    for result in (first, second, positional):
        assert np.array_equal(result.outputs["label"], expected["label"])
        assert np.array_equal(result.outputs["probabilities"], expected["probabilities"])
    assert second.version == 1 and second.digest == first.digest
    assert second.timing_us["run_us"] == 0

    samples = _samples(port)
    runs = samples[("inferis_inference_seconds_count", (("model", "iris"), ("version", "1")))]
    assert runs == 2  # the first and the other inputs; the two hits did not run
    lookups = {result: samples[("inferis_cache_lookups_total", (
        ("model", "iris"), ("result", result), ("version", "1")))] for result in ("hit", "miss")}
    assert lookups == {"hit": 2, "miss": 2}
    stats = _eventually(lambda: (s := client.modelstats("iris")).get("cache_hits") == 2 and s)
    assert stats["cache_misses"] == 2 and stats["requests"] == 4


def test_a_new_version_never_gets_the_old_versions_answers(client: Client, workers) -> None:
    x = np.array([[1, 2, 3]], np.float32)
    client.modelstore("scale", "onnx", models.scale_model(2.0), cache_ttl_ms=MINUTE_MS)
    assert client.predict("scale", [x])["Y"].tolist() == [[2, 4, 6]]
    assert client.run("scale", [x]).cached
    client.modelstore("scale", "onnx", models.scale_model(3.0), cache_ttl_ms=MINUTE_MS)
    fresh = client.run("scale", [x]).raise_for_error()
    assert (fresh.version, fresh.cached, fresh.outputs["Y"].tolist()) == (2, False, [[3, 6, 9]])
    again = client.run("scale", [x]).raise_for_error()
    assert (again.cached, again.outputs["Y"].tolist()) == (True, [[3, 6, 9]])
    old = client.run("scale", [x], version=1).raise_for_error()
    assert (old.version, old.cached, old.outputs["Y"].tolist()) == (1, True, [[2, 4, 6]])


def test_errors_are_never_cached(client: Client, start_workers, r: redis.Redis) -> None:
    start_workers(1)
    client.modelstore("reshape", "onnx", models.failing_model(), cache_ttl_ms=MINUTE_MS)
    bad = np.arange(3, dtype=np.float32)  # not 4 elements: the backend fails
    for _ in range(2):
        result = client.run("reshape", [bad])
        assert isinstance(result.error, BackendError) and not result.cached
    assert _entries(r, "reshape") == []
    good = np.arange(4, dtype=np.float32)
    assert not client.run("reshape", [good]).raise_for_error().cached
    assert client.run("reshape", [good]).raise_for_error().cached  # the model does cache
    stats = _eventually(lambda: (s := client.modelstats("reshape")).get("requests") == 4 and s)
    assert (stats["errors"], stats["cache_hits"], stats["cache_misses"]) == (2, 1, 3)


def test_a_request_past_its_deadline_is_an_error_not_a_hit(
    client: Client, start_workers, r: redis.Redis, iris
) -> None:
    pool = start_workers(1)
    client.modelstore("iris", "onnx", iris.blob, cache_ttl_ms=MINUTE_MS)
    x = iris.features[:2]
    client.predict("iris", {"X": x})
    assert client.run("iris", {"X": x}).cached

    def enqueue(rid: str, timeout_ms: int) -> str:
        """MODELRUN as redis-cli users type it; the answer goes to a done list."""
        tag = K.partition_tag(0)
        reply = r.execute_command(
            "FCALL", "MODELRUN", 2, K.request_stream(0), f"{tag}:in:{rid}", "MODEL", "iris",
            "INPUTS", 1, "DATA", 1, encode_tensor(x), "TIMEOUT", timeout_ms, "ID", rid)
        return reply[2].decode()

    worker = pool.processes[0]
    worker.send_signal(signal.SIGSTOP)
    try:
        late = enqueue("late-1", 100)
        time.sleep(0.5)
    finally:
        worker.send_signal(signal.SIGCONT)
    answer = json.loads(r.blpop([late], 10)[1])
    assert (answer["status"], answer["code"]) == ("error", "EDEADLINE")
    assert "cached" not in answer
    on_time = json.loads(r.blpop([enqueue("on-time-1", 10_000)], 10)[1])
    assert (on_time["status"], on_time.get("cached")) == ("ok", True)


def test_each_model_keeps_at_most_max_entries_per_partition(
    client: Client, start_workers, r: redis.Redis
) -> None:
    start_workers(1)
    client.modelstore("scale", "onnx", models.scale_model(2.0))  # no cache of its own
    client.set_cache("scale", MINUTE_MS, max_entries=4)
    rows = [np.full((1, 3), i, np.float32) for i in range(12)]
    assert not any(client.run("scale", [x]).raise_for_error().cached for x in rows)
    index = K.prediction_index(K.partition_tag(0), "scale")
    assert _eventually(lambda: r.zcard(index) == 4), r.zcard(index)
    time.sleep(0.2)  # nothing more arrives
    assert r.zcard(index) == 4 and len(_entries(r, "scale")) == 4
    assert 0 < r.pttl(_entries(r, "scale")[0]) <= MINUTE_MS
    assert all(client.run("scale", [x]).cached for x in rows[-4:])  # the newest four
    assert not client.run("scale", [rows[0]]).cached  # the oldest went first
    assert len(_entries(r, "scale")) <= 4

    client.set_cache("scale", 300, max_entries=4)  # answers live 0.3 s from now on
    x = np.full((1, 3), 100, np.float32)
    client.run("scale", [x])
    assert client.run("scale", [x]).cached
    time.sleep(0.6)
    assert not client.run("scale", [x]).cached


def test_the_model_and_an_alias_override_the_versions_setting(
    client: Client, workers
) -> None:
    client.modelstore("scale", "onnx", models.scale_model(2.0), cache_ttl_ms=MINUTE_MS)
    client.alias_set("scale", "prod", 1, warm=False)
    client.set_cache("scale", 0, alias="prod")  # the alias does not cache
    x = np.ones((1, 3), np.float32)
    for _ in range(2):
        assert not client.run("scale", [x], version="prod").cached
    client.run("scale", [x])
    assert client.run("scale", [x]).cached  # the version's own setting
    client.set_cache("scale", 0)  # the model's setting beats the version's
    y = np.full((1, 3), 2, np.float32)
    client.run("scale", [y])
    assert not client.run("scale", [y]).cached
    settings = client.cache_settings("scale")
    assert settings.model is not None and settings.model.ttl_ms == 0
    assert settings.aliases["prod"].ttl_ms == 0
    client.set_cache("scale", None)  # removed: the version's applies again
    client.run("scale", [y])
    assert client.run("scale", [y]).cached


def test_the_cli_stores_with_a_cache_and_changes_it(
    client: Client, workers, redis_server, iris, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "iris.onnx"
    path.write_bytes(iris.blob)
    model = ["model", "--redis", redis_server.url]
    assert main([*model, "store", "iris", str(path), "--cache-ttl-ms", "60000",
                 "--cache-max-entries", "100"]) == 0
    assert client.modelget("iris").extra["cache"] == {"ttl_ms": 60000, "max_entries": 100}
    x = iris.features[:1]
    client.run("iris", {"X": x})
    assert client.run("iris", {"X": x}).cached
    assert main([*model, "cache", "iris", "--ttl-ms", "0"]) == 0
    assert "iris: model off" in capsys.readouterr().out
    assert not client.run("iris", {"X": iris.features[1:2]}).cached
    assert main([*model, "cache", "iris", "--unset"]) == 0

    def shown() -> str:
        assert main([*model, "cache", "iris"]) == 0
        out = capsys.readouterr().out
        return out if "hits 1," in out else ""  # once the worker flushed its counts

    out = _eventually(shown)
    assert "model not set" in out and "ttl 60000 ms, at most 100 per partition" in out
    assert main([*model, "cache", "iris", "--max-entries", "5"]) == 1
    assert "error: EARGS --max-entries needs --ttl-ms" in capsys.readouterr().err


def test_on_a_cluster_answers_are_cached_beside_their_requests(tmp_path: Path, iris) -> None:
    from ..topology import ClusterStack

    stack = ClusterStack(tmp_path / "cluster", primaries=2, replicas=0, appendfsync="everysec")
    stack.start()
    try:
        with Client(stack.url, timeout_ms=20_000) as client:
            # the settings hash lives on the model's shard, the entries on each partition's
            client.modelstore("iris", "onnx", iris.blob)
            client.set_cache("iris", MINUTE_MS)
            refs = []
            for i in range(12):  # each user's features by key: its runs stay in its partition
                key = client.key_for(f"user:{i}", "features")
                client.tensorset(key, iris.features[i : i + 1])
                refs.append(Ref(key))
            first = [client.run("iris", {"X": ref}).raise_for_error() for ref in refs]
            again = [client.run("iris", {"X": ref}).raise_for_error() for ref in refs]
            assert not any(r.cached for r in first) and all(r.cached for r in again)
            for i, r in enumerate(again):
                assert np.array_equal(r.outputs["label"],
                                      iris.reference(iris.features[i : i + 1])["label"])
            per_node = [
                len(list(stack.cluster.client(port).scan_iter("{inferis:*}:cache:iris:*")))
                for port in stack.cluster.primary_ports()
            ]
            assert sum(per_node) == 12 and all(per_node)  # on both shards
    finally:
        stack.stop()
