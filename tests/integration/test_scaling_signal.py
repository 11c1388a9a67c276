"""The scaling signal: queue lag, pending entries and the oldest wait per partition,
and each worker's busy ratio, as a real worker exports them on /metrics."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from inferis.client import Client
from inferis.client.protocol import keys
from inferis.client.protocol.defaults import GROUP
from inferis.engine import metrics
from inferis.engine.local.embedded import free_port

P0 = (("partition", "0"),)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError("condition not reached")


def test_queued_requests_show_as_lag_and_a_growing_wait_until_served(
    client: Client, r: redis.Redis, start_workers, iris
) -> None:
    client.modelstore("iris", "onnx", iris.blob)
    # A worker that is connected and exports, but may not read its stream yet: the
    # default user loses XREADGROUP, so each read is refused (and retried).
    r.execute_command("ACL", "SETUSER", "default", "-xreadgroup")
    port = free_port()
    start_workers(1, "--metrics-port", str(port))
    runs = [client.submit("iris", {"X": iris.features[i : i + 1]}) for i in range(6)]
    stream = keys.request_stream(0)
    entries = r.xlen(stream)  # the runs' entries (a client may carry several in one)
    assert entries >= 1

    first = wait_for(lambda: (s := scrape(port)).get(("inferis_queue_lag", P0)) == entries
                     and s[("inferis_oldest_wait_seconds", P0)] > 0 and s)
    assert r.xlen(stream) == entries
    assert first[("inferis_queue_pending", P0)] == 0
    # The oldest request keeps waiting: its age grows with the clock, export to export.
    later = wait_for(lambda: (s := scrape(port))[("inferis_oldest_wait_seconds", P0)]
                     >= first[("inferis_oldest_wait_seconds", P0)] + 2 and s)
    assert later[("inferis_queue_lag", P0)] == entries
    waited = later[("inferis_oldest_wait_seconds", P0)]
    assert waited <= time.time() - int(r.xrange(stream, count=1)[0][0].split(b"-")[0]) / 1000 + 1

    r.execute_command("ACL", "SETUSER", "default", "+xreadgroup")
    for run in runs:
        assert client.wait(run).raise_for_error().outputs["label"].shape == (1,)
    served = wait_for(lambda: (s := scrape(port)).get(("inferis_queue_lag", P0)) == 0
                      and s[("inferis_queue_pending", P0)] == 0
                      and s[("inferis_oldest_wait_seconds", P0)] == 0 and s)
    assert served[("inferis_worker_busy_seconds_total", ())] > 0
    assert 0 <= served[("inferis_worker_busy_ratio", ())] <= 1


def test_lag_redis_cannot_tell_is_counted_from_the_stream(r: redis.Redis) -> None:
    """Workers delete what they answer, out of order: once the last delivered entry
    is gone while an older one is still pending, XINFO GROUPS says lag nil. The
    signal then counts the entries left in the stream that are not pending."""
    stream = keys.request_stream(3)
    r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = [r.xadd(stream, {"n": str(i)}) for i in range(10)]
    r.xreadgroup(GROUP, "w1", {stream: ">"}, count=4)
    for entry_id in ids[1:4]:  # answered: all but the oldest one read
        r.xack(stream, GROUP, entry_id)
        r.xdel(stream, entry_id)
    (group,) = r.xinfo_groups(stream)
    assert group["lag"] is None  # what Redis 7 says here, and what KEDA's lag reads as -1

    now_ms = int(r.time()[0]) * 1000 + 5_000  # five seconds after the first entry, or more
    found = metrics.read_signals([stream], lambda _: r, now_ms)[stream]
    assert (found.lag, found.pending) == (6, 1)
    oldest_ms = int(ids[0].split(b"-")[0])
    assert found.oldest_wait_s == pytest.approx((now_ms - oldest_ms) / 1000)

    r.xreadgroup(GROUP, "w1", {stream: ">"}, count=100)  # the rest delivered: no lag
    found = metrics.read_signals([stream], lambda _: r, now_ms)[stream]
    assert (found.lag, found.pending) == (0, 7)
    # a stream that does not exist (or has no group) is left out, not an error
    assert metrics.read_signals([keys.request_stream(4)], lambda _: r, now_ms) == {}


def test_busy_ratio_is_run_time_over_the_window() -> None:
    signal = metrics.ScalingSignal(window_s=10.0)
    start = signal._samples[0][0]
    signal.ran(1.0)
    assert signal.busy_ratio(start + 4.0) == pytest.approx(0.25)
    signal.ran(3.0)
    assert signal.busy_ratio(start + 8.0) == pytest.approx(0.5)
    # Past the window the oldest samples drop out: from 8 s to 20 s, 2 s of runs.
    signal.ran(2.0)
    assert signal.busy_ratio(start + 12.0) == pytest.approx(0.5)
    assert signal.busy_ratio(start + 20.0) == pytest.approx(2.0 / 12.0)
    assert signal.busy_ratio(start + 40.0) == pytest.approx(0.0)
