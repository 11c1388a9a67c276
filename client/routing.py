"""Where each key's commands go: one Redis (plain or Sentinel), or the node of a
Redis Cluster that owns the key's slot.

``redis+cluster://[user:password@]host:port[,host:port...]`` names a cluster by
some of its nodes; redis-py's cluster clients discover the rest, keep the slot
map and refresh it on ``MOVED``. ``rediss+cluster://...?ssl_ca_certs=...`` speaks
TLS to every node, with the TLS options of its query (as for
``rediss+sentinel://``, connection.py). The transports use the routes to pick a
connection for each command, and tell them when Redis said a slot moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

from .connection import async_pool, parse_hosts, parse_tls_query, sync_pool
from .protocol.errors import ArgumentError, ConnectionLostError, library_missing

CLUSTER_SCHEME = "redis+cluster"
CLUSTER_TLS_SCHEME = "rediss+cluster"
# redis-py's replies that mean "ask another node": the routes refresh and the
# command is sent again.
REDIRECTS = (redis.exceptions.MovedError, redis.exceptions.AskError,
             redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)


def must_resend(reply: object, cluster: bool) -> bool:
    """A reply that means "send it again shortly": the slot moved or is moving, or
    (in a cluster) the node has not been given the Functions library yet, which
    the workers do within seconds of a node taking slots."""
    return isinstance(reply, REDIRECTS) or (cluster and library_missing(reply))


def is_cluster_url(url: str) -> bool:
    return isinstance(url, str) and url.startswith(
        (CLUSTER_SCHEME + "://", CLUSTER_TLS_SCHEME + "://"))


@dataclass(frozen=True)
class ClusterTarget:
    hosts: list[tuple[str, int]]
    username: str | None
    password: str | None
    # ssl=True and the ssl_* options for every node ({}: plain)
    tls: dict[str, Any] = field(default_factory=dict)


def parse_cluster_url(url: str) -> ClusterTarget:
    parts = urlsplit(url)
    if parts.scheme not in (CLUSTER_SCHEME, CLUSTER_TLS_SCHEME):
        raise ArgumentError(f"not a {CLUSTER_SCHEME}:// or {CLUSTER_TLS_SCHEME}:// URL: {url}")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    hosts = parse_hosts(hostlist, "cluster node address")
    tls = parse_tls_query(parts.query, parts.scheme == CLUSTER_TLS_SCHEME, url)
    return ClusterTarget(hosts, unquote(user) or None, unquote(password) or None, tls)


def cluster_url(hosts: Sequence[tuple[str, int]], password: str | None = None,
                tls_query: str | None = None) -> str:
    """A cluster URL naming ``hosts``; with ``tls_query`` (TLS options, maybe
    empty) a ``rediss+cluster://`` one."""
    auth = f":{password}@" if password else ""
    scheme = CLUSTER_SCHEME if tls_query is None else CLUSTER_TLS_SCHEME
    query = f"?{tls_query}" if tls_query else ""
    return f"{scheme}://{auth}" + ",".join(f"{h}:{p}" for h, p in hosts) + query


class Routes:
    """Blocking routes: a connection pool per key (the client and the worker)."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.cluster: RedisCluster | None = None
        self._pool: redis.ConnectionPool | None = None
        if is_cluster_url(url):
            target = parse_cluster_url(url)
            try:  # it asks the nodes for the slot map now
                self.cluster = RedisCluster(
                    startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
                    username=target.username, password=target.password, protocol=2,
                    **{**target.tls, **options},
                )
            except RedisClusterException as exc:  # no node answered (down, TLS refused)
                raise ConnectionLostError(f"the cluster could not be reached: {exc}") from None
        else:
            self._pool = sync_pool(url, **options)

    def pool_for(self, key: str) -> redis.ConnectionPool:
        if self.cluster is None:
            assert self._pool is not None
            return self._pool
        node = self.cluster.get_node_from_key(key)
        return self.cluster.get_redis_connection(node).connection_pool

    def connection_for(self, key: str) -> redis.connection.AbstractConnection:
        """A connected connection of its own to the node serving ``key``, outside
        the pools (for a reader that blocks on it)."""
        conn = self.pool_for(key).make_connection()
        # connect() now: a Sentinel-managed connection finds the primary only here,
        # not on the implicit connect of a first write.
        conn.connect()
        return conn

    def node_of(self, key: str) -> str:
        """A name for the node serving ``key`` ("" for a single Redis)."""
        if self.cluster is None:
            return ""
        return self.cluster.get_node_from_key(key).name

    def primary_pools(self) -> list[redis.ConnectionPool]:
        if self.cluster is None:
            assert self._pool is not None
            return [self._pool]
        return [self.cluster.get_redis_connection(n).connection_pool
                for n in self.cluster.get_primaries()]

    def refresh(self) -> None:
        """Ask the cluster again which node holds which slot (after MOVED/ASK)."""
        if self.cluster is not None:
            self.cluster.nodes_manager.initialize()

    def disconnect(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
        elif self._pool is not None:
            self._pool.disconnect()


class AsyncRoutes:
    """asyncio routes: a new connection (not yet connected) for a key's node."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.cluster: AsyncRedisCluster | None = None
        self._pool: aioredis.ConnectionPool | None = None
        self._opened = False
        if is_cluster_url(url):
            target = parse_cluster_url(url)
            self.cluster = AsyncRedisCluster(
                startup_nodes=[AsyncClusterNode(h, p) for h, p in target.hosts],
                username=target.username, password=target.password, protocol=2,
                **{**target.tls, **options},
            )
        else:
            self._pool = async_pool(url, **options)

    async def open(self) -> None:
        if self.cluster is not None and not self._opened:
            try:
                await self.cluster.initialize()
            except RedisClusterException as exc:  # no node answered (down, TLS refused)
                # a connection error, which the transport retries and then reports
                raise redis.ConnectionError(str(exc)) from None
        self._opened = True

    def node_of(self, key: str) -> str:
        if self.cluster is None:
            return ""
        node = self.cluster.get_node_from_key(key)
        assert node is not None
        return node.name

    def primaries(self) -> list[str]:
        if self.cluster is None:
            return [""]
        return [n.name for n in self.cluster.get_primaries()]

    def connection_to(self, node: str) -> Any:
        """A connection of its own to the node named ``node`` ("": the single Redis);
        the caller connects and keeps it."""
        if self.cluster is None:
            assert self._pool is not None
            return self._pool.make_connection()
        found = self.cluster.get_node(node_name=node)
        if found is None:
            raise redis.ConnectionError(f"cluster node {node} is gone")
        return found.connection_class(**found.connection_kwargs)

    async def refresh(self) -> None:
        if self.cluster is not None:
            await self.cluster.nodes_manager.initialize()

    async def aclose(self) -> None:
        if self.cluster is not None:
            await self.cluster.aclose()
        elif self._pool is not None:
            await self._pool.aclose()
