"""Redis Cluster: 3 primaries + 3 replicas, a worker beside each primary, and the
SDK routing by slot. Real processes throughout (``redis-cli --cluster create``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inferis.client import ArgumentError, AsyncClient, Client, Ref
from inferis.client.protocol import keys
from inferis.client.protocol.defaults import CLUSTER_PARTITIONS, FUNCTION_LIBRARY, GROUP
from inferis.engine.local.supervisor import WorkerPool

from ..models import IrisModel
from ..topology import ClusterStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    stack = ClusterStack(tmp_path_factory.mktemp("cluster"), appendfsync="everysec")
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def client(stack: ClusterStack, iris: IrisModel) -> Iterator[Client]:
    with Client(stack.url, timeout_ms=20_000) as client:
        client.modelstore("iris", "onnx", iris.blob)
        yield client


def owner_of(stack: ClusterStack, key: str) -> int:
    """The port of the primary holding ``key``'s slot."""
    slot = keys.slot_of(key)
    node = stack.cluster.client(stack.cluster.primary_ports()[0])
    for start, end, owner, *_ in node.execute_command("CLUSTER", "SLOTS"):
        if int(start) <= slot <= int(end):
            return int(owner[1])
    raise AssertionError(f"no primary holds slot {slot}")


def served_by_port(stack: ClusterStack) -> dict[int, int]:
    """Entries read from the request streams, per primary (XINFO GROUPS)."""
    counts: dict[int, int] = {}
    for partition in keys.spread_partitions(CLUSTER_PARTITIONS):
        stream = keys.request_stream(partition)
        port = owner_of(stack, stream)
        for group in stack.cluster.client(port).xinfo_groups(stream):
            if group["name"] == GROUP.encode() or group["name"] == GROUP:
                counts[port] = counts.get(port, 0) + int(group.get("entries-read") or 0)
    return counts


def test_spread_partitions_cover_every_primary(stack: ClusterStack) -> None:
    owners = {owner_of(stack, keys.request_stream(p))
              for p in keys.spread_partitions(CLUSTER_PARTITIONS)}
    assert owners == set(stack.cluster.primary_ports())


def test_sync_and_async_predictions_are_served_on_every_shard(
    stack: ClusterStack, client: Client, iris: IrisModel
) -> None:
    before = served_by_port(stack)
    expected = iris.forest.predict(iris.features)  # type: ignore[attr-defined]
    for i in range(60):
        out = client.predict("iris", {"X": iris.features[i : i + 1]})
        assert out["label"][0] == expected[i]

    async def many() -> list[dict[str, np.ndarray]]:
        async with AsyncClient(stack.url, timeout_ms=20_000) as aclient:
            return await asyncio.gather(*(
                aclient.predict("iris", {"X": iris.features[i : i + 1]}) for i in range(150)
            ))

    outs = asyncio.run(many())
    assert [o["label"][0] for o in outs] == list(expected[:150])
    after = served_by_port(stack)
    # every primary's worker served some of them
    assert all(after.get(p, 0) > before.get(p, 0) for p in stack.cluster.primary_ports())


def test_model_is_stored_once_and_read_by_workers_on_every_shard(
    stack: ClusterStack, client: Client
) -> None:
    pattern = keys.model_key("iris", "*")
    holders = [port for port in stack.cluster.primary_ports()
               if stack.cluster.client(port).keys(pattern)]
    assert len(holders) == 1, holders  # one copy, every part under the model's own tag
    assert "iris" in client.modellist()
    assert client.modelversions("iris") == [1]


def test_library_is_put_back_on_a_primary_that_lost_it(
    stack: ClusterStack, client: Client, iris: IrisModel
) -> None:
    victim = stack.cluster.primary_ports()[1]
    node = stack.cluster.client(victim)
    node.function_delete(FUNCTION_LIBRARY)
    deadline = time.monotonic() + 15
    while not node.function_list(library=FUNCTION_LIBRARY):
        assert time.monotonic() < deadline, "no worker loaded the library again"
        time.sleep(0.1)
    # and runs routed to that shard go on being answered
    out = client.predict("iris", {"X": iris.features[:3]})
    assert out["label"].shape == (3,)


def test_a_run_meets_its_stored_tensor_in_one_slot(
    stack: ClusterStack, client: Client, iris: IrisModel
) -> None:
    key = client.key_for("user:42", "features")
    assert key.startswith("{inferis:") and key.endswith(":user:42:features")
    # the same user always lands on the same partition
    assert client.key_for("user:42", "other") .split(":user:")[0] == key.split(":user:")[0]
    client.tensorset(key, iris.features[:4])
    out = client.predict("iris", {"X": Ref(key)})
    np.testing.assert_array_equal(out["label"], iris.forest.predict(iris.features[:4]))  # type: ignore[attr-defined]
    partition = keys.partition_of(key)
    assert partition is not None
    assert keys.slot_of(key) == keys.slot_of(keys.request_stream(partition))


def test_a_key_outside_the_partition_tags_is_a_clear_error(
    client: Client, iris: IrisModel
) -> None:
    client.tensorset("{user:42}:features", iris.features[:2])
    with pytest.raises(ArgumentError, match="CROSSSLOT"):
        client.predict("iris", {"X": Ref("{user:42}:features")})
    mixed = [client.key_for("user:1", "a"), client.key_for("user:2", "b")]
    if keys.partition_of(mixed[0]) != keys.partition_of(mixed[1]):
        with pytest.raises(ArgumentError, match="one partition tag"):
            client.modelexecute("iris", [mixed[0]], [mixed[1]])
    # and the caller goes on being served
    assert client.predict("iris", {"X": iris.features[:1]})["label"].shape == (1,)


def test_a_worker_asked_for_all_partitions_serves_every_shard(
    stack: ClusterStack, tmp_path: Path
) -> None:
    pool = WorkerPool(stack.url, 1, ["--log-level", "WARNING", "--partitions", "all"])
    pool.start()
    try:
        name_of = None
        deadline = time.monotonic() + 30
        spread = keys.spread_partitions(CLUSTER_PARTITIONS)
        while True:
            seen: dict[str, int] = {}
            for partition in spread:
                stream = keys.request_stream(partition)
                conn = stack.cluster.client(owner_of(stack, stream))
                for consumer in conn.xinfo_consumers(stream, GROUP):
                    name = consumer["name"].decode()
                    if f"-{pool.processes[0].pid}-" in name:
                        seen[name] = seen.get(name, 0) + 1
            if seen:
                name_of, count = max(seen.items(), key=lambda kv: kv[1])
                if count == len(spread):
                    break
            assert time.monotonic() < deadline, f"consumer on {seen} of {len(spread)} streams"
            time.sleep(0.2)
        assert name_of is not None
    finally:
        pool.stop(grace_s=10)


def test_clients_route_through_a_redirect_after_the_slot_moves(
    stack: ClusterStack, client: Client, iris: IrisModel
) -> None:
    """A slot moved under a client that cached the old owner: MOVED is followed."""
    partition = keys.spread_partitions(CLUSTER_PARTITIONS)[0]
    stream = keys.request_stream(partition)
    source = owner_of(stack, stream)
    target = next(p for p in stack.cluster.primary_ports() if p != source)
    client.predict("iris", {"X": iris.features[:1]})  # the slot map is cached now
    stack.cluster.move_slot(keys.slot_of(stream), source, target)
    stack.cluster.wait_ok()
    key = f"{keys.partition_tag(partition)}:moved:features"
    client.tensorset(key, iris.features[:2])
    out = client.predict("iris", {"X": Ref(key)})
    assert out["label"].shape == (2,)
    assert owner_of(stack, stream) == target
    assert stack.cluster.client(target).exists(stream)
