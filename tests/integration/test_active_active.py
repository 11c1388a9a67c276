"""Active-Active: three regions (real redis-servers) joined by a replicator that merges
their writes the way a CRDT database does (tests/activeactive.py), links that go down
and heal, clocks that disagree. After healing every region holds the same models,
aliases and totals, and every request was answered once, in its own region."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from inferis.client import Client, InferisError
from inferis.client.protocol import keys
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.engine.local.supervisor import WorkerPool

from ..activeactive import Region, Replicator, regions
from ..models import scale_model, slow_model

NAMES = ("eu", "us", "ap")
# us's clock runs a minute ahead, ap's half a minute behind: if a wall clock
# decided anything below, us would win it.
SKEWS_MS = (0.0, 60_000.0, -30_000.0)
X = np.ones((1, 3), np.float32)


World = tuple[list[Region], Replicator, dict[str, WorkerPool]]


def _start_worker(url: str, region: str, conn: redis.Redis) -> WorkerPool:
    """One worker serving ``region``'s partitions on ``url``, once it reads its queue."""
    pool = WorkerPool(url, 1, ["--log-level", "WARNING", "--region", region])
    pool.start()
    stream = keys.request_stream(0, region)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.ResponseError):
            if conn.xinfo_consumers(stream, "inferis"):
                return pool
        time.sleep(0.05)
    pool.stop()
    raise TimeoutError(f"no worker for {region} joined {stream}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with regions(tmp_path_factory.mktemp("regions"), NAMES, SKEWS_MS) as (started, replicator):
        pools: dict[str, WorkerPool] = {}
        try:
            for region in started:
                pools[region.name] = _start_worker(region.server.url, region.name,
                                                   region.client())
            yield started, replicator, pools
        finally:
            for pool in pools.values():
                pool.stop(grace_s=5)


@contextlib.contextmanager
def clients(started: list[Region]) -> Iterator[list[Client]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(Client(r.server.url, region=r.name, timeout_ms=20_000))
               for r in started]


def _converged(started: list[Region], name: str) -> dict[str, object]:
    """What every region must agree on about model ``name`` after healing."""
    views = []
    for region in started:
        conn = region.client()
        base = keys.model_base(name)
        versions = [int(v) for v in conn.zrange(f"{base}:versions", 0, -1)]
        digests = {v: conn.hget(f"{base}:v:{v}", "digest") for v in versions}
        aliases = {}
        for alias in sorted(conn.smembers(f"{base}:alias_names")):
            with contextlib.suppress(redis.ResponseError):  # deleted everywhere alike
                flat = conn.fcall_ro("MODELALIASGET", 1, base, alias)
                record = dict(zip(flat[::2], flat[1::2], strict=True))
                aliases[alias] = (record.get(b"spec"), record.get(b"epoch"))
        stats = {v: int(conn.hget(f"{base}:stats:{v}", "requests") or 0) for v in versions}
        quality = _quality_view(conn.fcall_ro("MODELQUALITY", 1, base)) if versions else ()
        views.append({"versions": versions, "digests": digests, "aliases": aliases,
                      "stats": stats, "quality": quality})
        conn.close()
    for region, view in zip(started[1:], views[1:], strict=True):
        assert view == views[0], f"{region.name} differs from {started[0].name}"
    return views[0]


def _quality_view(reply: list) -> object:
    """MODELQUALITY as maps (a hash's field order is each region's own), without the
    ``last_ms`` times: a time every region writes is last write wins, which the
    simulator only approximates (tests/activeactive.py)."""
    def as_map(flat: list) -> dict:
        return {k: v for k, v in zip(flat[::2], flat[1::2], strict=True) if k != b"last_ms"}

    versions, feedback, pairs = reply
    return (
        {versions[i]: (as_map(versions[i + 1]), as_map(versions[i + 2]))
         for i in range(0, len(versions), 3)},
        as_map(feedback),
        {pairs[i]: as_map(pairs[i + 1]) for i in range(0, len(pairs), 2)},
    )


def _settle_stats(replicator: Replicator) -> None:
    """Workers flush their counters every 2 s: wait for the last flush to travel."""
    time.sleep(2.5)
    replicator.settle(quiet_s=0.3)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("store"), st.integers(0, 2), st.integers(1, 4)),
        st.tuples(st.just("alias"), st.integers(0, 2), st.sampled_from(["prod", "canary"]),
                  st.integers(0, 5)),
        st.tuples(st.just("unalias"), st.integers(0, 2), st.sampled_from(["prod", "canary"])),
        st.tuples(st.just("run"), st.integers(0, 2), st.sampled_from(["latest", "prod"]),
                  st.integers(1, 3)),
        st.tuples(st.just("feedback"), st.integers(0, 2)),
        st.tuples(st.just("cut"), st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.just("heal"),),
    ),
    min_size=4, max_size=14,
)


def test_random_interleavings_converge_and_every_request_is_answered_once_at_home(
    world: World,
) -> None:
    started, replicator, _ = world

    # no shrinking: each example takes seconds of real processes, and a failure is
    # printed as found
    @settings(max_examples=8, deadline=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ops=OPS)
    def interleaving(ops: list[tuple]) -> None:
        name = f"m{uuid.uuid4().hex[:8]}"
        served: Counter[int] = Counter()  # version -> runs answered
        answered: list[tuple[int, str]] = []  # (region, rid)
        feedback_given = 0
        with clients(started) as cs:
            for op in ops:
                kind, where = op[0], op[1] if len(op) > 1 else 0
                client = cs[where]
                if kind == "store":
                    client.modelstore(name, "onnx", scale_model(float(op[2])))
                elif kind == "alias":
                    try:
                        versions = client.modelversions(name)
                    except InferisError:
                        versions = []  # nothing stored (or replicated) here yet
                    if versions:
                        client.alias_set(name, op[2], versions[op[3] % len(versions)],
                                         warm=False)
                elif kind == "unalias":
                    with contextlib.suppress(InferisError):  # no such alias here (yet)
                        client.alias_del(name, op[2])
                elif kind == "run":
                    for _ in range(op[3]):
                        try:
                            result = client.run(name, {"X": X}, version=op[2])
                        except InferisError:
                            continue  # not stored (or not replicated) here yet
                        served[result.version] += 1
                        answered.append((where, result.rid))
                elif kind == "feedback":
                    mine = [rid for region, rid in answered if region == where]
                    if mine:
                        with contextlib.suppress(InferisError):  # the log entry has not come
                            client.feedback(name, mine[-1], 1.0)
                            feedback_given += 1
                elif kind == "cut" and op[1] != op[2]:
                    replicator.cut(NAMES[op[1]], NAMES[op[2]])
                elif kind == "heal":
                    replicator.heal()
            replicator.heal()
            _settle_stats(replicator)
            for c in cs:
                assert c.unmatched_answers == 0  # no request was answered twice
        view = _converged(started, name)
        assert view["stats"] == {v: served[v] for v in view["versions"]}, (served, view)
        assert not replicator.unknown
        # in its own region: each queue has readers only in its region (consumers do
        # not replicate; a worker of another region never read it)
        for region in started:
            conn = region.client()
            for other in NAMES:
                stream = keys.request_stream(0, other)
                readers = conn.xinfo_consumers(stream, "inferis") if conn.exists(stream) else []
                if other == region.name:
                    assert readers, f"{region.name}'s worker reads its own queue"
                else:
                    assert not readers, f"{region.name} has readers of {other}'s queue"
            conn.close()

    interleaving()


def test_concurrent_versions_and_alias_decisions_resolve_by_region_order_not_clock(
    world: World,
) -> None:
    started, replicator, _ = world
    eu, us, _ = started
    name = f"m{uuid.uuid4().hex[:8]}"
    with clients(started) as (c_eu, c_us, _c_ap):
        c_eu.modelstore(name, "onnx", scale_model(1.0))
        replicator.settle()
        replicator.cut("eu", "us")
        replicator.cut("us", "ap")
        replicator.cut("eu", "ap")
        v_eu = c_eu.modelstore(name, "onnx", scale_model(2.0)).version
        v_us = c_us.modelstore(name, "onnx", scale_model(3.0)).version
        assert v_eu != v_us  # stored at once in two regions: two numbers, never one
        assert v_eu % 16 == eu.index and v_us % 16 == us.index
        c_eu.alias_set(name, "prod", v_eu, warm=False)
        time.sleep(0.05)
        c_us.alias_set(name, "prod", v_us, warm=False)  # later, and us's clock is ahead
        replicator.heal()
        replicator.settle()
        view = _converged(started, name)
        # the same epoch on both sides: the lower region index (eu) wins, not the clock
        assert view["aliases"][b"prod"][0] == f"{v_eu}=10000".encode()
        assert max(view["versions"]) == max(v_eu, v_us)  # latest: the same everywhere
        for client in (c_eu, c_us):
            assert client.run(name, {"X": X}, version="prod").version == v_eu
        # a later decision (higher epoch) wins wherever it is made
        c_us.alias_set(name, "prod", v_us, warm=False)
        replicator.settle()
        assert _converged(started, name)["aliases"][b"prod"][0] == f"{v_us}=10000".encode()
        # the same file stored in two regions at once: two versions, one blob, which
        # deleting either version leaves to the other
        replicator.isolate("eu")
        twin_eu = c_eu.modelstore(name, "onnx", scale_model(6.0)).version
        twin_us = c_us.modelstore(name, "onnx", scale_model(6.0)).version
        assert twin_eu != twin_us
        replicator.heal()
        replicator.settle()
        c_eu.modeldel(name, version=twin_eu)
        replicator.settle()
        for client in (c_eu, c_us):
            assert client.run(name, {"X": X}, version=twin_us).outputs["Y"][0, 0] == 6.0


def test_a_dead_regions_acknowledged_requests_are_answered_by_another(
    world: World,
) -> None:
    """ap dies while its worker is busy: some requests answered, some read and in
    flight, the rest queued, every one confirmed by WAIT 1 (the replicator had carried
    it to the other regions). A worker started in us for ap's partitions answers what
    ap owed: none lost, none answered twice. (Runs last: ap stays dead.)"""
    started, replicator, pools = world
    _, us, ap = started
    name = f"m{uuid.uuid4().hex[:8]}"
    slow_x = np.ones((128, 128), np.float32)
    with Client(ap.server.url, region="ap", wait_replicas=1, wait_timeout_ms=3000) as client:
        client.modelstore(name, "onnx", slow_model(steps=400, size=128))  # ms a run
        replicator.isolate("ap")  # nothing leaves ap: WAIT 1 cannot be met
        with pytest.raises(InferisError, match="replica"):
            client.submit(name, {"X": slow_x})
        replicator.heal()
        replicator.settle()
        # six calls of ten (six stream entries, six WAITs)
        rids = {f.rid for _ in range(6) for f in client.submit_many(name, [{"X": slow_x}] * 10)}
        ap_conn, us_view = ap.client(), us.client()
        stream = keys.request_stream(0, "ap")
        deadline = time.monotonic() + 30
        while len(set(_answers(us_view))) < 10 and time.monotonic() < deadline:
            time.sleep(0.005)  # let ap's worker answer some (and those answers travel)
        in_flight = ap_conn.xpending(stream, "inferis")["pending"]
        replicator.isolate("ap")
        for process in pools.pop("ap").processes:  # ap dies: no drain, no goodbye
            process.kill()
        ap.server.kill()
    us_conn = us.client()
    answered_before = set(_answers(us_conn))
    takeover = _start_worker(us.server.url, "ap", us_conn)
    answers: Counter[str] = Counter()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answers = Counter(_answers(us_conn))
            if rids <= set(answers):
                break
            time.sleep(0.2)
    finally:
        takeover.stop(grace_s=5)
    lost = rids - set(answers)
    twice = {rid for rid in rids if answers[rid] > 1}
    print(f"ap failover: {len(rids)} acknowledged; {len(answered_before & rids)} answered by "
          f"ap, {in_flight} in flight at the failure; {len(lost)} lost, "
          f"{len(twice)} answered twice")
    assert not lost
    assert len(twice) <= in_flight


def _answers(conn: redis.Redis) -> Iterator[str]:
    """Every answer in us's copies of ap's reply streams, by request id."""
    from inferis.client.protocol.replies import unpack_answers

    for stream in conn.scan_iter(match=f"{keys.partition_tag(0, 'ap')}:replies:*"):
        for _, fields in conn.xrange(stream):
            for result in unpack_answers(fields[b"d"]):
                yield result.rid


def model_file(folder: Path) -> Path:
    path = folder / "scale.onnx"
    path.write_bytes(scale_model(1.0))
    return path


def test_regions_are_named_once_and_may_only_grow(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    def inferis(*args: str, code: int = 0) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "inferis.engine", "regions", "--redis", redis_server.url,
             *args], capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == code and "Traceback" not in done.stderr, done
        return done.stdout + done.stderr

    assert "single-region" in inferis()
    assert inferis("eu,us").split() == ["1", "eu", "2", "us"]
    assert "error: EARGS" in inferis("us,eu", code=1)  # the order numbers versions
    assert "error: EARGS" in inferis("eu,EU", code=1)
    assert inferis("eu,us,ap").split()[-2:] == ["3", "ap"]
    stored = subprocess.run(
        [sys.executable, "-m", "inferis.engine", "model", "--redis", redis_server.url,
         "--region", "ap", "store", "m", str(model_file(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )
    assert stored.returncode == 0, stored.stderr
    assert redis.Redis.from_url(redis_server.url).zrange("inferis:{m}:versions", 0, -1) == [
        b"19"]  # ap is region 3: its first version is 16 + 3
    with Client(redis_server.url, region="mars") as client, \
            pytest.raises(InferisError, match="not in inferis:regions"):
        client.modelstore("m", "onnx", scale_model(1.0))
