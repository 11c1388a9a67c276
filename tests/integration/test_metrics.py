"""Observability: Prometheus metrics per worker, per-model stats through Redis."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferis.client import Client, InputError
from inferis.engine.local.embedded import free_port


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _wait_for(predicate, timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError("condition not reached")


def test_metrics_and_stats_count_every_request(
    client: Client, start_workers, iris, redis_server
) -> None:
    port = free_port()
    start_workers(1, "--metrics-port", str(port))
    client.modelstore("iris", "onnx", iris.blob)
    for i in range(7):
        client.predict("iris", {"X": iris.features[i : i + 2]})
    for _ in range(3):
        with pytest.raises(InputError):
            client.predict("iris", {"X": np.ones((1, 5), np.float32)})

    samples = _scrape(port)
    ok = (("model", "iris"), ("status", "ok"), ("version", "1"))
    bad = (("model", "iris"), ("status", "EINPUT"), ("version", "1"))
    assert samples[("inferis_requests_total", ok)] == 7
    assert samples[("inferis_requests_total", bad)] == 3
    assert samples[("inferis_inference_seconds_count", (("model", "iris"), ("version", "1")))] == 7
    assert samples[("inferis_request_seconds_count", (("model", "iris"),))] == 10
    loads = (("backend", "onnx"), ("model", "iris"), ("version", "1"))
    assert samples[("inferis_model_loads_total", loads)] == 1
    assert samples[("inferis_read_batch_size_count", ())] >= 1

    stats = _wait_for(lambda: (s := client.modelstats("iris")).get("requests") == 10 and s)
    assert stats["errors"] == 3 and stats["run_us"] > 0

    shown = subprocess.run(
        [sys.executable, "-m", "inferis.engine", "model", "--redis", redis_server.url, "stats"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()
    row = next(line for line in shown if line.startswith("iris"))
    assert row.split()[1:3] == ["10", "3"]


def test_a_gpu_model_on_a_cpu_worker_falls_back_loudly(client: Client, start_workers, iris) -> None:
    port = free_port()
    start_workers(1, "--metrics-port", str(port), "--device", "CPU")
    client.modelstore("iris-gpu", "onnx", iris.blob, device="GPU:0")
    out = client.predict("iris-gpu", {"X": iris.features[:3]})
    assert np.array_equal(out["label"], iris.reference(iris.features[:3])["label"])
    fallback = (("backend", "onnx"), ("model", "iris-gpu"), ("wanted", "GPU:0"))
    assert _scrape(port)[("inferis_device_fallbacks_total", fallback)] == 1


def test_health_endpoints_beside_metrics(redis_server, start_workers) -> None:
    port = free_port()
    pool = start_workers(1, "--metrics-port", str(port))
    base = f"http://127.0.0.1:{port}"
    assert urllib.request.urlopen(base + "/health/live", timeout=10).status == 200
    deadline = time.monotonic() + 20
    while True:  # ready once connected with the library loaded
        try:
            if urllib.request.urlopen(base + "/health/ready", timeout=10).status == 200:
                break
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.1)
    redis_server.kill()  # Redis gone: live, not ready
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(base + "/health/ready", timeout=10)
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            break
        assert time.monotonic() < deadline, "still ready without Redis"
        time.sleep(0.1)
    assert urllib.request.urlopen(base + "/health/live", timeout=10).status == 200
    assert pool.processes[0].poll() is None
