"""Replicated topologies on loopback, real processes: a replica and three Sentinels,
or a Redis Cluster with workers beside its primaries; either one TLS only when
given the local CA's files."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from inferis.client.protocol import keys
from inferis.client.protocol.defaults import CLUSTER_PARTITIONS
from inferis.engine.local.cluster import LocalCluster
from inferis.engine.local.embedded import EmbeddedRedis, find_redis_server, free_port
from inferis.engine.local.supervisor import WorkerPool
from inferis.engine.local.tls import TlsFiles

SERVICE = "inferis-primary"


def replica_of(primary: EmbeddedRedis, data_dir: Path, **options: str) -> EmbeddedRedis:
    """A replica with the primary's password and TLS (it may be promoted, and its
    old primary may come back as its replica)."""
    auth = {"masterauth": primary.password} if primary.password else {}
    config = {"replicaof": f"127.0.0.1 {primary.port}", **auth, **options}
    return EmbeddedRedis(data_dir, appendfsync="always", extra_config=config,
                         password=primary.password, tls=primary.tls,
                         mutual_tls=primary.mutual_tls)


def wait_for_link(replica: EmbeddedRedis, timeout_s: float = 20.0) -> None:
    conn = replica.client()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if conn.info("replication").get("master_link_status") == "up":
            return
        time.sleep(0.05)
    raise TimeoutError("the replica never linked to its primary")


class Sentinels:
    """Three Sentinels watching one primary; quorum 2, fast failure detection.
    With ``tls`` they listen only on TLS and reach the primary, the replicas and
    one another over TLS (``tls-replication yes`` is what turns that on)."""

    def __init__(self, data_dir: Path, primary_port: int, count: int = 3, *,
                 password: str | None = None, tls: TlsFiles | None = None,
                 mutual_tls: bool = False) -> None:
        self.data_dir = data_dir
        self.primary_port = primary_port
        self.ports = [free_port() for _ in range(count)]
        self.password = password  # the primary's and replicas' (the Sentinels have none)
        self.tls = tls
        self.mutual_tls = mutual_tls
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        auth = f":{self.password}@" if self.password else ""
        if self.tls is None:
            return f"redis+sentinel://{auth}{hosts}/{SERVICE}"
        return f"rediss+sentinel://{auth}{hosts}/{SERVICE}?{self.tls.query(self.mutual_tls)}"

    def _options(self) -> dict[str, Any]:
        return self.tls.options(self.mutual_tls) if self.tls is not None else {}

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, **self._options())

    def node(self, port: int) -> redis.Redis:
        """A client of the primary or a replica on ``port``."""
        return redis.Redis(host="127.0.0.1", port=port, password=self.password,
                           **self._options())

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for port in self.ports:
            conf = self.data_dir / f"sentinel-{port}.conf"
            listen = (self.tls.server_config(port, self.mutual_tls) if self.tls is not None
                      else {"port": str(port)})
            auth = f"sentinel auth-pass {SERVICE} {self.password}\n" if self.password else ""
            conf.write_text(
                "".join(f"{k} {v}\n" for k, v in listen.items())
                + f"bind 127.0.0.1\ndir {self.data_dir.resolve()}\n"
                f"logfile {(self.data_dir / f'sentinel-{port}.log').resolve()}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                + auth
                + f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self.processes.append(
                subprocess.Popen(
                    [find_redis_server(), str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            self._wait(lambda p=port: self.sentinel(p).ping())

    def primary_port_now(self) -> int:
        addr = self.sentinel(self.ports[0]).sentinel_get_master_addr_by_name(SERVICE)
        return int(addr[1])

    def wait_for_failover(self, old_port: int, timeout_s: float = 60.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                port = self.primary_port_now()
                if port != old_port and self.node(port).info("replication")["role"] == "master":
                    return port
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise TimeoutError("Sentinel did not promote the replica")

    @staticmethod
    def _wait(check, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise TimeoutError("a sentinel did not start")

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


class ClusterStack:
    """A LocalCluster with workers beside each primary, as ``inferis up --cluster``
    lays them out; workers beside a node added later are started on demand."""

    def __init__(self, data_dir: Path, primaries: int = 3, replicas: int = 1,
                 worker_args: tuple[str, ...] = (), appendfsync: str = "always", *,
                 password: str | None = None, tls: TlsFiles | None = None,
                 mutual_tls: bool = False) -> None:
        self.cluster = LocalCluster(data_dir, primaries, replicas, appendfsync=appendfsync,
                                    password=password, tls=tls, mutual_tls=mutual_tls)
        self.worker_args = ["--log-level", "WARNING", *worker_args]
        self.pools: dict[int, WorkerPool] = {}

    @property
    def url(self) -> str:
        return self.cluster.url

    def start(self) -> None:
        self.cluster.start()
        for port in self.cluster.primary_ports():
            self.workers_beside(port)
        self.wait_served()

    def workers_beside(self, port: int, count: int = 1) -> WorkerPool:
        pool = WorkerPool(self.cluster.url_beside(port), count, self.worker_args)
        pool.start()
        self.pools[port] = pool
        return pool

    def wait_served(self, timeout_s: float = 60.0) -> None:
        """Until every spread partition's request stream has a consumer group."""
        cluster = redis.RedisCluster(host="127.0.0.1", port=self.cluster.nodes[0].port,
                                     **self.cluster.client_options())
        deadline = time.monotonic() + timeout_s
        try:
            for partition in keys.spread_partitions(CLUSTER_PARTITIONS):
                while True:
                    try:
                        if cluster.xinfo_groups(keys.request_stream(partition)):
                            break
                    except redis.ResponseError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no worker serves partition {partition}")
                    time.sleep(0.1)
        finally:
            cluster.close()

    def workers_alive(self) -> bool:
        return all(p.poll() is None for pool in self.pools.values() for p in pool.processes)

    def stop(self) -> None:
        for pool in self.pools.values():
            pool.stop(grace_s=10)
        self.cluster.stop()
