"""A Redis Cluster on loopback: N primaries with R replicas each (``inferis up
--cluster`` and the tests). Real ``redis-server --cluster-enabled yes``
processes, joined with ``redis-cli --cluster create``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from .embedded import EmbeddedRedis, RedisServerError, free_port


def find_redis_cli() -> str:
    path = shutil.which("redis-cli")
    if path is None:
        raise RedisServerError(
            "redis-cli is not on PATH (Debian: apt-get install redis-tools); it creates the cluster"
        )
    return path


class LocalCluster:
    """``primaries`` x (1 + ``replicas``) nodes, each an EmbeddedRedis with AOF."""

    def __init__(
        self,
        data_dir: Path,
        primaries: int = 3,
        replicas: int = 1,
        *,
        appendfsync: str = "everysec",
        node_timeout_ms: int = 2000,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster has at least one primary and no negative replicas")
        self.data_dir = Path(data_dir)
        self.primaries = primaries
        self.replicas = replicas
        self.appendfsync = appendfsync
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[EmbeddedRedis] = []

    @property
    def url(self) -> str:
        """A URL of one node; cluster clients discover the others from it."""
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    def node(self, port: int | None = None) -> EmbeddedRedis:
        return next(n for n in self.nodes if n.port == port)

    def make_node(self, index: int) -> EmbeddedRedis:
        port = free_port()
        return EmbeddedRedis(
            self.data_dir / f"node-{index}-{port}",
            port=port,
            appendfsync=self.appendfsync,
            extra_config={
                "cluster-enabled": "yes",
                "cluster-config-file": "nodes.conf",
                "cluster-node-timeout": str(self.node_timeout_ms),
                # A shard that lost its primary and replica stops serving, as in
                # production; the others go on.
                "cluster-require-full-coverage": "no",
            },
        )

    def start(self, timeout_s: float = 60.0) -> str:
        self.nodes = [self.make_node(i) for i in range(self.primaries * (1 + self.replicas))]
        for node in self.nodes:
            node.start()
        hosts = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [find_redis_cli(), "--cluster", "create", *hosts, "--cluster-replicas",
             str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, text=True, timeout=timeout_s,
        )
        self.wait_ok(timeout_s)
        return self.url

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Until every live node says the cluster is ok and agrees on all slots."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                if node.process is None or node.process.poll() is not None:
                    continue
                try:
                    info = redis.Redis(port=node.port).cluster("info")
                except redis.RedisError:
                    states.append(False)
                    continue
                states.append(info.get("cluster_state") == "ok"
                              and int(info.get("cluster_slots_ok", 0)) == 16384)
            if states and all(states):
                return
            time.sleep(0.1)
        raise RedisServerError("the cluster did not become ok in time")

    def primary_ports(self) -> list[int]:
        """Ports of the nodes that are primaries now (as the cluster sees it)."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                shards = redis.Redis(port=node.port).execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            return sorted({int(s[2][1]) for s in shards})
        return []

    def add_node(self, replica_of: int | None = None) -> EmbeddedRedis:
        """Start a node and join it (empty primary, or replica of a primary port)."""
        node = self.make_node(len(self.nodes))
        node.start()
        self.nodes.append(node)
        args = [find_redis_cli(), "--cluster", "add-node", f"127.0.0.1:{node.port}",
                f"127.0.0.1:{self.primary_ports()[0]}"]
        if replica_of is not None:
            args += ["--cluster-slave", "--cluster-master-id", self.node_id(replica_of)]
        subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)
        return node

    def node_id(self, port: int) -> str:
        return redis.Redis(port=port).execute_command("CLUSTER", "MYID").decode()

    def reshard(self, source: int, target: int, slots: int) -> None:
        """Move ``slots`` slots from the primary on ``source`` to the one on ``target``
        with redis-cli, while the cluster serves."""
        subprocess.run(
            [find_redis_cli(), "--cluster", "reshard", f"127.0.0.1:{source}",
             "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
             "--cluster-slots", str(slots), "--cluster-yes"],
            check=True, capture_output=True, text=True, timeout=300,
        )

    def remove_node(self, port: int) -> None:
        """Take an empty node (no slots) out of the cluster and stop it."""
        subprocess.run(
            [find_redis_cli(), "--cluster", "del-node", f"127.0.0.1:{self.primary_ports()[0]}",
             self.node_id(port)],
            check=True, capture_output=True, text=True, timeout=60,
        )
        self.node(port).stop()
        self.nodes = [n for n in self.nodes if n.port != port]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
