"""Connections from URLs: a plain Redis, or the primary that Sentinel names.

``redis://host:port/db`` (or ``rediss://``) connects directly.
``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]`` asks
the Sentinels for the current primary of ``service`` and asks again after a
failover, so clients and workers follow a promoted replica without operator
action.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from .errors import ArgumentError

SENTINEL_SCHEME = "redis+sentinel"

try:  # hiredis packs commands in C; redis-py's asyncio connection packs in Python
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency, but stay usable
    _hiredis_pack = None


class _HiredisPackingConnection(aioredis.Connection):
    """redis-py's asyncio connection, packing commands with hiredis (as its sync one does)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if _hiredis_pack is None:
            return super().pack_command(*args)
        # redis-py may pass one multi-word command name ("CLIENT SETNAME"); split it
        if isinstance(args[0], str) and " " in args[0]:
            args = (*args[0].split(), *args[1:])
        return [_hiredis_pack(args)]


@dataclass(frozen=True)
class SentinelTarget:
    hosts: list[tuple[str, int]]
    service: str
    db: int
    password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget:
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ArgumentError(f"not a {SENTINEL_SCHEME}:// URL: {url}")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    password = unquote(userinfo.partition(":")[2]) if userinfo else None
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ArgumentError(f"sentinel address {item!r} must be host:port")
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ArgumentError("a sentinel URL names its service: redis+sentinel://h:p/mymaster")
    db = int(path[1]) if len(path) > 1 else 0
    return SentinelTarget(hosts, path[0], db, password or None)


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME + "://")


def sync_connection(url: str, **options: Any) -> redis.Redis:
    """A blocking client for ``url``; ``options`` go to each connection."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    sentinel = Sentinel(target.hosts, socket_timeout=2.0)
    return sentinel.master_for(
        target.service, db=target.db, password=target.password, **options
    )


def async_connection(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` holding at most one connection for plain URLs.

    Callers serialise their commands, so one connection is all they use.
    """
    if not is_sentinel_url(url):
        if urlsplit(url).scheme == "redis":  # plain TCP; TLS and unix keep their classes
            options.setdefault("connection_class", _HiredisPackingConnection)
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=1, **options)
        return aioredis.Redis(connection_pool=pool)
    target = parse_sentinel_url(url)
    sentinel = AsyncSentinel(target.hosts, socket_timeout=2.0)
    return sentinel.master_for(
        target.service, db=target.db, password=target.password, **options
    )
