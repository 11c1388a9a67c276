"""Model lifecycle against real Redis and workers: aliases and sticky splits, warm
swaps, the audit stream, shadow traffic, feedback joined to logged predictions,
ranking, and a canary guard rolling a bad canary back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import pytest
import redis

from inferis.client import ArgumentError, AsyncClient, CanaryGuard, Client, ModelNotFoundError
from inferis.client import drift as D
from inferis.client import quality as Q
from inferis.client.protocol import keys
from inferis.engine.local.embedded import EmbeddedRedis

from ..conftest import WorkerFactory
from ..models import IrisModel, scale_model


def wait_until(check: Callable[[], object], timeout_s: float = 15.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def weak_iris() -> bytes:
    """A stump: a worse classifier of the same inputs and outputs."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    features, labels = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(features, labels)
    return to_onnx(stump, features[:1], options={id(stump): {"zipmap": False}}).SerializeToString()


def iris_truth() -> np.ndarray:
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)[1]


def test_alias_points_moves_and_rolls_back_with_an_audit(
    client: Client, start_workers: WorkerFactory, r: redis.Redis
) -> None:
    start_workers(1)
    v1 = client.modelstore("scale", "onnx", scale_model(1.0)).version
    v2 = client.modelstore("scale", "onnx", scale_model(2.0)).version
    x = np.ones((1, 3), np.float32)
    assert client.alias_set("scale", "production", v1, by="ops") == ("active", 1)
    result = client.run("scale", {"X": x}, version="production")
    assert result.version == v1 and result.digest  # every answer names what served it
    # the worker holds v1 and says so: the move waits until it has v2 warm too
    wait_until(lambda: r.hlen(keys.model_key("scale", "workers")), what="a heartbeat")
    state, _ = client.alias_set("scale", "production", v2, by="ops")
    assert state == "pending"
    assert client.run("scale", {"X": x}, version="production").version == v1  # meanwhile
    wait_until(lambda: client.alias_commit("scale", "production")[0] == "active", what="commit")
    warmers = r.hgetall(keys.model_key("scale", f"warm:{v2}"))
    assert len(warmers) == 1
    assert client.run("scale", {"X": x}, version="production").version == v2
    client.alias_set("scale", "production", v1, by="oncall")  # rollback: warm already
    assert wait_until(lambda: client.alias_get("scale", "production").arms == ((v1, 10_000),))
    history = client.alias_history("scale")
    events = [(h["event"], h["to"], h["by"]) for h in history]  # by: <ACL user>/<by=>
    assert events[0] == ("commit", f"{v1}=10000", "default/oncall")
    assert ("commit", f"{v2}=10000", "default/ops") in events
    assert ("set", f"{v2}=10000", "default/ops") in events
    assert all(int(h["ms"]) > 0 for h in history)
    epochs = [int(h["epoch"]) for h in history if h["event"] == "commit"]
    assert epochs == sorted(epochs, reverse=True) and len(set(epochs)) == len(epochs)
    # the commit of v2 came after the worker reported it warm
    commit_ms = next(int(h["ms"]) for h in history if h["to"] == f"{v2}=10000"
                     and h["event"] == "commit")
    assert max(int(ms) for ms in warmers.values()) <= commit_ms


def test_a_version_an_alias_uses_cannot_be_deleted(client: Client) -> None:
    v1 = client.modelstore("scale", "onnx", scale_model(1.0)).version
    client.alias_set("scale", "stable", v1)
    with pytest.raises(ArgumentError, match="alias stable"):
        client.modeldel("scale", v1)
    with pytest.raises(ModelNotFoundError, match="no version 99"):
        client.alias_set("scale", "stable", {v1: 0.5, 99: 0.5})
    with pytest.raises(ArgumentError):
        client.alias_set("scale", "latest", v1)
    with pytest.raises(ArgumentError, match="share above 0"):
        client.alias_set("scale", "stable", {v1: 0})
    with pytest.raises(ArgumentError, match="truth"):
        client.feedback("scale", "someone.1", "abc")  # type: ignore[arg-type]


def test_split_is_sticky_per_unit_across_worker_restarts(
    client: Client, start_workers: WorkerFactory
) -> None:
    pool = start_workers(2)
    v1 = client.modelstore("scale", "onnx", scale_model(1.0)).version
    v2 = client.modelstore("scale", "onnx", scale_model(2.0)).version
    client.alias_set("scale", "ab", {v1: 0.5, v2: 0.5}, warm=False)
    x = np.ones((1, 3), np.float32)
    users = [f"user:{i}" for i in range(60)]

    def served() -> dict[str, int]:
        futures = client.submit_many("scale", [{"X": x}] * len(users) * 2, version="ab",
                                     units=users * 2)
        versions = [client.wait(f).version for f in futures]
        first, second = versions[: len(users)], versions[len(users):]
        assert first == second  # the same unit, the same version, whichever worker
        return dict(zip(users, first, strict=True))

    before = served()
    assert set(before.values()) == {v1, v2}
    pool.stop()
    start_workers(1)  # another process: the choice depends on the unit alone
    assert served() == before


def test_shadow_gets_a_share_and_agreement_is_recorded(
    client: Client, start_workers: WorkerFactory, r: redis.Redis
) -> None:
    start_workers(1)
    v1 = client.modelstore("scale", "onnx", scale_model(1.0)).version
    v3 = client.modelstore("scale", "onnx", scale_model(1.5)).version
    client.alias_set("scale", "prod", v1, shadow=v3, shadow_share=1.0, warm=False)
    x = np.full((1, 3), 2.0, np.float32)
    for _ in range(40):
        result = client.run("scale", {"X": x}, version="prod")
        assert result.version == v1  # callers get the primary's answer only
        np.testing.assert_array_equal(result.outputs["Y"], x)
    pair = keys.model_key("scale", f"shadow:{v1}:{v3}")
    stats = wait_until(lambda: r.hgetall(pair) if int(r.hget(pair, "compared") or 0) >= 40
                       else None, what="shadow agreement")
    assert int(stats[b"compared"]) == 40 and int(stats[b"agreed"]) == 0
    assert float(stats[b"max_diff"]) == pytest.approx(1.0)  # 2 * 1.5 - 2 * 1.0
    assert client.shadow_agreement("scale") == {
        (v1, v3): {"compared": 40, "agreed": 0, "max_diff": pytest.approx(1.0)}}


def test_feedback_joins_exactly_as_an_offline_join(
    redis_server: EmbeddedRedis, start_workers: WorkerFactory, iris: IrisModel
) -> None:
    """50,000 predictions over a 70/30 split of a good and a weak classifier, 60% of
    them labelled afterwards (in shuffled order, some twice, plus unknown ids)."""
    start_workers(2)
    truth = iris_truth()
    n = 50_000
    rng = np.random.default_rng(3)
    rows = rng.integers(0, len(truth), n)

    async def scenario() -> tuple[list, dict, dict]:
        async with AsyncClient(redis_server.url, timeout_ms=60_000) as client:
            good = (await client.modelstore("iris", "onnx", iris.blob)).version
            weak = (await client.modelstore("iris", "onnx", weak_iris())).version
            await client.alias_set("iris", "exp", {good: 0.7, weak: 0.3}, warm=False)
            answers = []
            for start in range(0, n, 2000):
                chunk = rows[start : start + 2000]
                answers += await asyncio.gather(*(
                    client.run("iris", {"X": iris.features[i : i + 1]}, version="exp",
                               unit=f"u{start + j}")
                    for j, i in enumerate(chunk)
                ))
            labelled = rng.permutation(n)[: int(n * 0.6)]
            statuses: dict[str, int] = {}
            for start in range(0, len(labelled), 2000):
                part = labelled[start : start + 2000]
                got = await asyncio.gather(*(
                    client.feedback("iris", answers[k].rid, float(truth[rows[k]])) for k in part
                ))
                for status, _ in got:
                    statuses[status] = statuses.get(status, 0) + 1
            again = await client.feedback("iris", answers[labelled[0]].rid, 0.0)
            unknown = await client.feedback("iris", "nobody.1", 1.0)
            statuses["again"], statuses["unknown"] = again[0] == "repeated", unknown[0]
            return [(answers[k], rows[k]) for k in labelled], statuses, \
                await client.quality("iris")

    joined, statuses, quality = asyncio.run(scenario())
    assert statuses["joined"] == int(n * 0.6) and statuses["again"] is True
    assert statuses["unknown"] == "unknown"
    offline: dict[int, dict[str, float]] = {}
    for answer, row in joined:
        assert answer.error is None
        o = offline.setdefault(answer.version, {"n": 0, "correct": 0, "logloss_e6": 0})
        o["n"] += 1
        o["correct"] += int(answer.outputs["label"][0] == truth[row])
        p = float(answer.outputs["probabilities"][0][truth[row]])
        o["logloss_e6"] += int(np.floor(-np.log(max(p, 1e-15)) * 1e6 + 0.5))
    for version, o in offline.items():
        q = quality[version]["quality"]
        assert q["n"] == o["n"] and q["correct"] == o["correct"]
        assert abs(q["logloss_e6"] - o["logloss_e6"]) <= o["n"]  # float formatting: < 1e-6 each
    ranked = Q.rank(Q.summarize(v, quality[v]["quality"], quality[v]["kind"]) for v in offline)
    assert [r.version for r in ranked] == [1, 2]  # the forest beats the stump
    assert ranked[0].low > ranked[1].high  # and the intervals say so


def test_a_planted_bad_canary_is_rolled_back_within_its_window(
    client: Client, start_workers: WorkerFactory
) -> None:
    start_workers(1)
    good = client.modelstore("scale", "onnx", scale_model(1.0)).version
    bad = client.modelstore("scale", "onnx", scale_model(1.0, width=5)).version  # wrong width
    client.alias_set("scale", "prod", {good: 0.8, bad: 0.2}, warm=False,
                     guard=CanaryGuard(max_error_rate=0.05, min_requests=20, window_s=60))
    x = np.ones((1, 3), np.float32)
    errors = 0
    for i in range(300):
        result = client.run("scale", {"X": x}, version="prod", unit=f"u{i}")
        errors += result.error is not None
    assert errors > 20  # the canary failed its share
    route = wait_until(
        lambda: (a := client.alias_get("scale", "prod")).state == "rolled back" and a,
        timeout_s=20, what="rollback")
    assert route.arms == ((good, 10_000),)
    rollback = next(h for h in client.alias_history("scale") if h["event"] == "rollback")
    assert rollback["by"] == "canary guard" and f"version {bad}" in rollback["why"]
    assert all(client.run("scale", {"X": x}, version="prod", unit=f"u{i}").error is None
               for i in range(50))


def test_drift_of_a_shifted_input_is_seen_against_the_reference_window(
    client: Client, start_workers: WorkerFactory, iris: IrisModel
) -> None:
    start_workers(1, "--drift-window-s", "1")
    version = client.modelstore("iris", "onnx", iris.blob).version
    client.alias_set("iris", "production", version, warm=False)
    rng = np.random.default_rng(4)

    def send(shift: float) -> None:
        rows = iris.features[rng.integers(0, len(iris.features), 400)].copy()
        rows[:, 2] += shift  # petal length moves; the other columns do not
        futures = client.submit_many("iris", [{"X": rows[i : i + 1]} for i in range(len(rows))],
                                     version="production")
        assert all(client.wait(f).error is None for f in futures)

    def counted(after: int) -> int:
        """Values of petal length in the windows after ``after``."""
        report = client.drift("iris", version)
        return sum(sum(client.drift("iris", version, current=w).current.get("in:X:2", []))
                   for w in report.windows if w > after)

    send(0.0)
    wait_until(lambda: counted(-1) == 400, what="the first traffic in the windows")
    last_normal = max(client.drift("iris", version).windows)
    time.sleep(1.2)  # later windows hold only what comes next
    send(3.0)
    wait_until(lambda: counted(last_normal) == 400, what="the shifted traffic")
    report = client.drift("iris", version)
    assert report.current_window > last_normal
    by_column = {c.column: c for c in report.columns}
    assert by_column["in:X:2"].verdict == "drift" and by_column["in:X:2"].psi > 1.0
    for column in ("in:X:0", "in:X:1", "in:X:3"):
        assert by_column[column].psi < D.PSI_DRIFT, by_column[column]
    # the outputs moved too: longer petals are another class
    assert by_column["out:label:0"].psi > D.PSI_WATCH
    assert report.columns[0].column == "in:X:2"


def test_an_alias_written_before_decisions_is_read_and_replaced(
    client: Client, r: redis.Redis
) -> None:
    """Library 10 and older kept an alias as plain fields; they still resolve, and the
    first change writes a decision above their epoch (and drops them)."""
    v1 = client.modelstore("scale", "onnx", scale_model(2.0)).version
    v2 = client.modelstore("scale", "onnx", scale_model(3.0)).version
    old = keys.model_key("scale", "alias:production")
    r.hset(old, mapping={"spec": f"{v1}=10000", "state": "active", "epoch": 3, "by": "ops"})
    r.sadd(keys.model_key("scale", "alias_names"), "production")
    assert client.alias_get("scale", "production").arms == ((v1, 10_000),)
    assert client.modelget("scale", "production").version == v1
    assert client.alias_set("scale", "production", v2, warm=False) == ("active", 4)
    assert set(r.hkeys(old)) == {b"4.0"}  # the old fields are gone
    assert client.alias_get("scale", "production").arms == ((v2, 10_000),)
