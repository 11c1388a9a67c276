"""A Redis Cluster on loopback: N primaries with R replicas each (``inferis up
--cluster`` and the tests). Real ``redis-server --cluster-enabled yes``
processes, joined with ``redis-cli --cluster create``; with TLS, every node
speaks only TLS, to clients, to its replicas and on the cluster bus.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from inferis.client.routing import cluster_url

from .embedded import EmbeddedRedis, RedisServerError, free_port
from .tls import TlsFiles


def find_redis_cli() -> str:
    path = shutil.which("redis-cli")
    if path is None:
        raise RedisServerError(
            "redis-cli is not on PATH (Debian: apt-get install redis-tools); it creates the cluster"
        )
    return path


# A node's cluster bus listens on its port + 10000, which must be a port too.
CLUSTER_BUS_OFFSET = 10000


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free as well."""
    while True:
        port = free_port()
        if port + CLUSTER_BUS_OFFSET > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port


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
        password: str | None = None,
        tls: TlsFiles | None = None,
        mutual_tls: bool = False,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster has at least one primary and no negative replicas")
        self.data_dir = Path(data_dir)
        self.primaries = primaries
        self.replicas = replicas
        self.appendfsync = appendfsync
        self.node_timeout_ms = node_timeout_ms
        self.password = password
        self.tls = tls
        self.mutual_tls = mutual_tls
        self.nodes: list[EmbeddedRedis] = []

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node (clients need only one);
        ``rediss+cluster://`` with TLS, its query trusting the local CA."""
        return self._url(self.startup_nodes)

    def url_beside(self, port: int) -> str:
        """The URL for a worker beside the node on ``port``: that node first."""
        return self._url([("127.0.0.1", port)] + [h for h in self.startup_nodes if h[1] != port])

    def _url(self, hosts: list[tuple[str, int]]) -> str:
        query = self.tls.query(self.mutual_tls) if self.tls is not None else None
        return cluster_url(hosts, self.password, query)

    def client_options(self) -> dict[str, Any]:
        """redis-py's keyword arguments (password, TLS) for a client of any node."""
        tls = self.tls.options(self.mutual_tls) if self.tls is not None else {}
        return {"password": self.password, **tls}

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    def node(self, port: int) -> EmbeddedRedis:
        return next(n for n in self.nodes if n.port == port)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, **self.client_options())

    def _cli(self, *args: str, timeout_s: float = 60.0) -> None:
        """``redis-cli --cluster ...``; retried while the nodes' views of the
        configuration still differ (gossip settles within a few seconds)."""
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        if self.tls is not None:
            auth += ["--tls", "--cacert", str(self.tls.ca), "--cert", str(self.tls.client_cert),
                     "--key", str(self.tls.client_key)]
        deadline = time.monotonic() + timeout_s
        while True:
            done = subprocess.run([find_redis_cli(), *auth, "--cluster", *args],
                                  capture_output=True, text=True, timeout=timeout_s)
            if done.returncode == 0:
                return
            said = (done.stdout + done.stderr).strip()
            settling = "agree about configuration" in said or "please retry" in said
            if not settling or time.monotonic() > deadline:
                raise RedisServerError(f"redis-cli --cluster {args[0]} failed: {said[-2000:]}")
            time.sleep(0.5)

    def make_node(self, index: int, port: int | None = None) -> EmbeddedRedis:
        port = port or cluster_port()
        auth = {"masterauth": self.password} if self.password else {}
        # the bus is TLS too, and nodes tell TLS clients their TLS port
        bus = {"tls-cluster": "yes"} if self.tls is not None else {}
        return EmbeddedRedis(
            self.data_dir / f"node-{index}-{port}",
            port=port,
            appendfsync=self.appendfsync,
            password=self.password,
            tls=self.tls,
            mutual_tls=self.mutual_tls,
            extra_config={
                **auth,
                **bus,
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
        try:
            for node in self.nodes:
                node.start()
            if self.primaries >= 3:
                self._cli("create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                          "--cluster-replicas", str(self.replicas), "--cluster-yes",
                          timeout_s=timeout_s)
            else:
                self._join_by_hand(timeout_s)
            self.wait_ok(timeout_s)
        except BaseException:
            self.stop()  # no half-made cluster left running
            raise
        return self.url

    def _join_by_hand(self, timeout_s: float) -> None:
        """What ``redis-cli --cluster create`` does, for the 1 or 2 primaries it
        refuses: slots split evenly, every node met, replicas attached."""
        primaries, replicas = self.nodes[: self.primaries], self.nodes[self.primaries :]
        bounds = [round(i * 16384 / self.primaries) for i in range(self.primaries + 1)]
        for index, node in enumerate(self.nodes):
            conn = self.client(node.port)
            conn.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            if index < self.primaries:
                conn.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[index],
                                     bounds[index + 1] - 1)
            if index:
                conn.execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
        for node in self.nodes:
            self.wait_known(self.node_id(node.port), timeout_s)
        for index, replica in enumerate(replicas):
            primary = primaries[index % self.primaries]
            self.client(replica.port).execute_command(
                "CLUSTER", "REPLICATE", self.node_id(primary.port))

    def alive(self) -> list[EmbeddedRedis]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Until every live node says the cluster is ok, every slot served, all
        agree on who owns each slot, and every replica is linked to its primary."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                views = []
                for node in self.alive():
                    conn = self.client(node.port)
                    info = conn.cluster("info")
                    if info.get("cluster_state") != "ok" or int(
                        info.get("cluster_slots_ok", 0)
                    ) != 16384:
                        break
                    replication = conn.info("replication")
                    if replication.get("role") == "slave" and \
                            replication.get("master_link_status") != "up":
                        break  # a replica still syncing would fail WAIT
                    views.append(sorted((s[0], s[1], s[2][1])
                                        for s in conn.execute_command("CLUSTER", "SLOTS")))
                else:
                    if views and all(v == views[0] for v in views):
                        return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RedisServerError("the cluster did not become ok in time")

    def primary_ports(self) -> list[int]:
        """Ports of the nodes that are primaries now (as the cluster sees it)."""
        for node in self.alive():
            try:
                shards = self.client(node.port).execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            return sorted({int(s[2][1]) for s in shards})
        return []

    def replica_ports(self, primary: int) -> list[int]:
        ports = []
        for node in self.alive():
            info = self.client(node.port).info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary:
                ports.append(node.port)
        return ports

    def slots_of(self, port: int) -> int:
        """How many slots the primary on ``port`` holds."""
        total = 0
        for start, end, owner, *_ in self.client(port).execute_command("CLUSTER", "SLOTS"):
            if int(owner[1]) == port:
                total += int(end) - int(start) + 1
        return total

    def node_id(self, port: int) -> str:
        return self.client(port).execute_command("CLUSTER", "MYID").decode()

    def add_node(self, replica_of: int | None = None) -> EmbeddedRedis:
        """Start a node and join it (an empty primary, or a replica of a primary port)."""
        node = self.make_node(len(self.nodes))
        node.start()
        extra = ["--cluster-slave", "--cluster-master-id", self.node_id(replica_of)] \
            if replica_of is not None else []
        self._cli("add-node", f"127.0.0.1:{node.port}",
                  f"127.0.0.1:{self.primary_ports()[0]}", *extra)
        self.nodes.append(node)
        self.wait_known(self.node_id(node.port))
        self.wait_ok()  # the newcomer sees the cluster as ok before it takes slots
        return node

    def wait_known(self, node_id: str, timeout_s: float = 30.0) -> None:
        """Until every live node lists ``node_id`` (gossip spreads a joined node)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                views = [self.client(n.port).cluster("nodes") for n in self.alive()]
                if all(any(v.get("node_id") == node_id for v in view.values())
                       for view in views):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RedisServerError(f"node {node_id} was not known to every node in time")

    def reshard(self, source: int, target: int, slots: int) -> None:
        """Move ``slots`` slots from the primary on ``source`` to the one on ``target``
        with redis-cli (MIGRATE, key by key) while the cluster serves."""
        self._cli("reshard", f"127.0.0.1:{source}", "--cluster-from", self.node_id(source),
                  "--cluster-to", self.node_id(target), "--cluster-slots", str(slots),
                  "--cluster-yes", timeout_s=300)

    def move_slot(self, slot: int, source: int, target: int) -> None:
        """Move one slot and its keys, as redis-cli does for each slot it moves:
        IMPORTING/MIGRATING, MIGRATE in batches, then the new owner told to all."""
        src, dst = self.client(source), self.client(target)
        src_id, dst_id = self.node_id(source), self.node_id(target)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        auth = ["AUTH", self.password] if self.password else []
        while batch := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 10_000, *auth,
                                "KEYS", *batch)
        for port in self.primary_ports():
            self.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def remove_node(self, port: int) -> None:
        """Take a node without slots (a replica, or an emptied primary) out of the
        cluster and stop it."""
        node_id = self.node_id(port)
        others = [n.port for n in self.alive() if n.port != port]
        self._cli("del-node", f"127.0.0.1:{others[0]}", node_id)
        self.node(port).stop()
        self.nodes = [n for n in self.nodes if n.port != port]

    def kill(self, port: int) -> None:
        """SIGKILL one node (its data dir stays, to restart it)."""
        self.node(port).kill()

    def restart(self, port: int) -> EmbeddedRedis:
        """Start a killed node again on its port and data (it rejoins as it was told)."""
        old = self.node(port)
        node = EmbeddedRedis(old.data_dir, port=port, appendfsync=self.appendfsync,
                             password=self.password, tls=self.tls, mutual_tls=self.mutual_tls,
                             extra_config=old.extra_config)
        node.start()
        self.nodes = [node if n.port == port else n for n in self.nodes]
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
