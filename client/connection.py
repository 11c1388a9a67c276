"""Connections from URLs (a plain Redis, or the primary Sentinel names), and the one
primitive both transports use: send a list of commands in one write, read
their replies in order.

``redis://host:port/db`` (or ``rediss://``) connects directly.
``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]`` asks
the Sentinels for the current primary of ``service`` and asks again after a
failover, so clients and workers follow a promoted replica without operator
action. ``rediss+sentinel://...?ssl_ca_certs=...`` speaks TLS to the Sentinels
and to the primary, with the TLS options of its query (those of ``rediss://``:
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``,
``ssl_check_hostname``). redis-py makes the connections (handshake, AUTH, TLS,
Sentinel); commands are packed by hiredis and replies parsed by redis-py's hiredis
parser, without redis-py's per-command layers, which cost more than Redis
itself on the hot path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import MasterNotFoundError as AsyncMasterNotFoundError
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.connection import to_bool
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from .protocol.errors import ArgumentError

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_TLS_SCHEME = "rediss+sentinel"
# Replies are parsed as RESP2 everywhere: one shape to handle, whatever the URL says.
_OPTIONS = {"protocol": 2}
# The TLS options a multi-host URL's query may carry: those that redis-py's
# Sentinel, RedisCluster and asyncio RedisCluster all take.
TLS_QUERY_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_ca_certs": str, "ssl_certfile": str, "ssl_keyfile": str, "ssl_cert_reqs": str,
    "ssl_check_hostname": to_bool,
}


@dataclass(frozen=True)
class SentinelTarget:
    hosts: list[tuple[str, int]]
    service: str
    db: int
    password: str | None
    # ssl=True and the ssl_* options, for the Sentinels and the primary alike ({}: plain)
    tls: dict[str, Any] = field(default_factory=dict)
    username: str | None = None  # the ACL user of the data nodes (the Sentinels take none)


def parse_hosts(hostlist: str, what: str) -> list[tuple[str, int]]:
    """``h1:p1,h2:p2`` (IPv6 hosts in brackets) of a multi-host URL."""
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ArgumentError(f"{what} {item!r} must be host:port")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def parse_tls_query(query: str, tls: bool, url: str) -> dict[str, Any]:
    """``ssl=True`` and the TLS options in the query of a multi-host URL whose
    scheme says TLS (``tls``); {} for a plain one. Anything else is refused, so a
    misspelt option does not quietly leave a connection unverified."""
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in TLS_QUERY_OPTIONS:
            raise ArgumentError(f"unknown URL option {name!r} (the options are "
                                f"{', '.join(TLS_QUERY_OPTIONS)}): {url}")
        options[name] = TLS_QUERY_OPTIONS[name](value)
    if options and not tls:
        raise ArgumentError(f"TLS options need a TLS scheme (rediss+...://): {url}")
    return {"ssl": True, **options} if tls else {}


def parse_sentinel_url(url: str) -> SentinelTarget:
    parts = urlsplit(url)
    if parts.scheme not in (SENTINEL_SCHEME, SENTINEL_TLS_SCHEME):
        raise ArgumentError(f"not a {SENTINEL_SCHEME}:// or {SENTINEL_TLS_SCHEME}:// URL: {url}")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    hosts = parse_hosts(hostlist, "sentinel address")
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ArgumentError("a sentinel URL names its service: redis+sentinel://h:p/mymaster")
    db = int(path[1]) if len(path) > 1 else 0
    tls = parse_tls_query(parts.query, parts.scheme == SENTINEL_TLS_SCHEME, url)
    return SentinelTarget(hosts, path[0], db, unquote(password) or None, tls,
                          unquote(user) or None)


def is_sentinel_url(url: str) -> bool:
    return url.startswith((SENTINEL_SCHEME + "://", SENTINEL_TLS_SCHEME + "://"))


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise ArgumentError(
            "url must be redis://host:port[/db], rediss://..., redis+sentinel://... or "
            f"rediss+sentinel://..., got {url!r}"
        )
    return url


def _sentinel_options(target: SentinelTarget, retry: Any) -> dict[str, Any]:
    """What each connection to a Sentinel gets: a short timeout, no retries of its
    own (the next Sentinel is asked at once, and the caller retries the round; a
    refused TLS handshake would be retried with backoff for seconds per Sentinel),
    and the URL's TLS (redis-py's Sentinel would give them only the socket options)."""
    return {"socket_timeout": 2.0, "retry": retry, **target.tls}


def _no_primary(service: str, why: list[str]) -> str:
    said = "; ".join(why) if why else "the Sentinels answered but name no healthy primary"
    return f"no Sentinel named a primary for {service!r}: {said}"


class _Sentinel(Sentinel):
    """redis-py's Sentinel, saying why no Sentinel answered (a refused TLS handshake,
    say): its own message names only each error's class."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        try:
            return super().discover_master(service_name)
        except MasterNotFoundError:
            why = []
            for sentinel in self.sentinels:
                try:
                    sentinel.ping()
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    why.append(str(exc))
            raise MasterNotFoundError(_no_primary(service_name, why)) from None


class _AsyncSentinel(AsyncSentinel):
    """:class:`_Sentinel` for asyncio."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        try:
            return await super().discover_master(service_name)
        except AsyncMasterNotFoundError:
            why = []
            for sentinel in self.sentinels:
                try:
                    await sentinel.ping()
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    why.append(str(exc))
            raise AsyncMasterNotFoundError(_no_primary(service_name, why)) from None


def sync_connection(url: str, **options: Any) -> redis.Redis:
    """A blocking redis-py client for ``url``; ``options`` go to each connection."""
    options = {**_OPTIONS, **options}
    if not is_sentinel_url(_check_url(url)):
        return redis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    no_retry = Retry(NoBackoff(), 0)
    sentinel = _Sentinel(target.hosts, sentinel_kwargs=_sentinel_options(target, no_retry),
                         socket_timeout=2.0)
    return sentinel.master_for(
        target.service, db=target.db, username=target.username, password=target.password,
        **{**target.tls, **options}
    )


def sync_pool(url: str, **options: Any) -> redis.ConnectionPool:
    return sync_connection(url, **options).connection_pool


def async_pool(url: str, **options: Any) -> aioredis.ConnectionPool:
    """An asyncio connection pool for ``url`` (Sentinel-managed for sentinel URLs)."""
    options = {**_OPTIONS, **options}
    if not is_sentinel_url(_check_url(url)):
        return aioredis.ConnectionPool.from_url(url, **options)
    target = parse_sentinel_url(url)
    no_retry = AsyncRetry(NoBackoff(), 0)
    sentinel = _AsyncSentinel(target.hosts, sentinel_kwargs=_sentinel_options(target, no_retry),
                              socket_timeout=2.0)
    client = sentinel.master_for(
        target.service, db=target.db, username=target.username, password=target.password,
        **{**target.tls, **options}
    )
    return client.connection_pool


def pack(commands: Sequence[Sequence[Any]]) -> bytes:
    return b"".join(pack_command(tuple(c)) for c in commands)


def roundtrip(
    conn: redis.connection.AbstractConnection, commands: Sequence[Sequence[Any]]
) -> list[Any]:
    """Send ``commands`` in one write; their replies in order, errors as values."""
    conn.send_packed_command([pack(commands)], check_health=False)
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:  # that reply was read whole: keep going
            replies.append(exc)
    return replies


async def aroundtrip(
    conn: aioredis.connection.AbstractConnection,
    commands: Sequence[Sequence[Any]],
    timeout_s: float | None,
) -> list[Any]:
    """:func:`roundtrip` for an asyncio connection, each reply awaited up to ``timeout_s``.

    The connection should have no socket timeout of its own: redis-py then writes
    without wrapping each write in a task.
    """
    await conn.send_packed_command([pack(commands)], check_health=False)
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await conn.read_response(timeout=timeout_s))
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


class Pipe:
    """An asyncio connection on which writes never wait for replies.

    Commands are written at once (no await) and their replies are read in
    order by a task of the pipe's own, so many batches are in flight on one
    connection and a caller's batch starts its trip while the next is being
    built. A connection that breaks fails every reply still pending; the next
    :meth:`open` connects again.
    """

    def __init__(self, make_connection: Callable[[], Any]) -> None:
        self._make_connection = make_connection
        self._conn: Any = None
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self._conn is not None and self._conn.is_connected and self._reader is not None

    async def open(self) -> None:
        async with self._opening:
            if self.ready:
                return
            if self._conn is None:
                self._conn = self._make_connection()
            if not self._conn.is_connected:
                await self._conn.connect()
            self._reader = asyncio.get_running_loop().create_task(self._read_replies())

    def write(self, commands: Sequence[Sequence[Any]]) -> list[asyncio.Future[Any]]:
        """Send ``commands`` now; one future per reply (a ResponseError is a value)."""
        assert self.ready, "open() the pipe first"
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self._pending.extend(futures)
        # redis-py's own send would wrap the write in a task; the stream writer buffers.
        self._conn._writer.write(pack(commands))
        return futures

    async def _read_replies(self) -> None:
        conn = self._conn
        try:
            while True:
                try:
                    reply = await conn.read_response(timeout=None)
                except redis.ResponseError as exc:
                    reply = exc
                if self._pending:
                    future = self._pending.popleft()
                    if not future.done():
                        future.set_result(reply)
        except BaseException as exc:
            self._break(exc if isinstance(exc, Exception) else redis.ConnectionError("closed"))
            if not isinstance(exc, Exception):
                raise

    def _break(self, exc: Exception) -> None:
        self._reader = None
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(exc)

    async def reset(self) -> None:
        """Drop the connection (a reply never came, or the link broke)."""
        if self._reader is not None:
            self._reader.cancel()
        self._break(redis.ConnectionError("connection reset"))
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect(nowait=True)

    async def close(self) -> None:
        await self.reset()
        self._conn = None
