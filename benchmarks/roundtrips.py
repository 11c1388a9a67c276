"""Redis commands per request on the hot path, from INFO commandstats deltas.

A fixed number of predict calls runs against an otherwise idle inferis; the
commandstats delta, less what the idle workers and reader issue in the same
time (blocking reads that time out, stats flushes), divided by the number of
calls, is the cost of one request. MONITOR, on for the same window, tells who
issued each command: the benchmark's client, a worker, or a Redis Function
(commands a function runs cost no network round trip).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections import Counter
from typing import Any

import psutil
import redis

from inferis.client import AsyncClient

# Our own measuring commands, not part of any request.
_IGNORED = {"info", "monitor", "client|list", "client"}
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_SOURCE = re.compile(r"^\+[\d.]+ \[\d+ ([^\]]+)\] ")


def commandstats(conn: redis.Redis) -> Counter[str]:
    stats = conn.info("commandstats")
    return Counter({
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name.removeprefix("cmdstat_") not in _IGNORED
    })


class Monitor:
    """MONITOR on a raw socket in a thread; ``stop`` returns (source, command) pairs."""

    def __init__(self, host: str, port: int) -> None:
        self._sock = socket.create_connection((host, port))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        self._sock.sendall(b"MONITOR\r\n")
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                return
            self._chunks.append(data)

    def stop(self) -> list[tuple[str, str]]:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        events = []
        for raw in b"".join(self._chunks).split(b"\r\n"):
            line = raw.decode("utf-8", errors="replace")
            source = _SOURCE.match(line)
            if source is None:
                continue  # "+OK" or a partial line
            words = _QUOTED.findall(line[source.end():])
            if not words:
                continue
            command = words[0].lower()
            if command in ("fcall", "fcall_ro") and len(words) > 1:
                command = f"{command} {words[1]}"
            events.append((source.group(1), command))
        return events


def _own_ports(redis_port: int) -> set[int]:
    """Local ports of this process's connections to Redis: the benchmark's client."""
    return {
        c.laddr.port for c in _connections(psutil.Process())
        if c.raddr and c.raddr.port == redis_port
    }


def _role(source: str, own: set[int]) -> str:
    if source == "lua":
        return "inside functions"
    port = int(source.rsplit(":", 1)[-1]) if ":" in source else -1
    return "client" if port in own else "worker"


async def _drive(client: AsyncClient, model: str, inputs: list[Any], calls: int,
                 concurrency: int) -> None:
    async def one(k: int) -> None:
        for i in range(k, calls, concurrency):
            await client.predict(model, inputs[i % len(inputs)])

    await asyncio.gather(*(one(k) for k in range(concurrency)))


async def measure(
    url: str, client: AsyncClient, model: str, inputs: list[Any], *,
    calls: int = 500, concurrency: int = 1,
) -> dict[str, Any]:
    conn = redis.Redis.from_url(url)
    kwargs = conn.connection_pool.connection_kwargs
    host, port = kwargs["host"], int(kwargs["port"])
    try:
        await _drive(client, model, inputs, min(calls, 50), concurrency)  # warm: models loaded
        own = _own_ports(port)
        monitor = Monitor(host, port)
        before = commandstats(conn)
        monitor.start()
        started = time.perf_counter()
        await _drive(client, model, inputs, calls, concurrency)
        elapsed = time.perf_counter() - started
        events = monitor.stop()
        after = commandstats(conn)
        # The same time with no requests: what idle workers and the reader cost.
        idle_s = min(elapsed, 5.0)
        idle_before = commandstats(conn)
        await asyncio.sleep(idle_s)
        idle = commandstats(conn) - idle_before
    finally:
        conn.close()
    scale = elapsed / idle_s
    per_request = {}
    for command in sorted(set(after) | set(before)):
        net = (after[command] - before[command]) - idle[command] * scale
        if net / calls >= 0.005:
            per_request[command] = round(net / calls, 3)
    roles: dict[str, Counter[str]] = {}
    for source, command in events:
        if command in _IGNORED or command.startswith("client"):
            continue
        roles.setdefault(_role(source, own), Counter())[command] += 1
    by_role = {
        role: {c: round(n / calls, 3) for c, n in counts.most_common() if n / calls >= 0.005}
        for role, counts in roles.items()
    }
    return {
        "model": model,
        "calls": calls,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "commands_per_request": per_request,
        "total_per_request": round(sum(per_request.values()), 3),
        "by_issuer_per_request": by_role,
        "idle_commands_per_s": {c: round(n / idle_s, 2) for c, n in idle.items() if n},
    }


def _connections(process: psutil.Process) -> list:  # type: ignore[type-arg]
    """psutil 6 renamed connections() to net_connections(); the kserve client's
    dependencies may hold psutil below 6."""
    lister = getattr(process, "net_connections", None) or process.connections
    return lister(kind="tcp")
