"""A simulation of an Active-Active (CRDT) deployment: real redis-servers as regions.

Each region is a redis-server of its own. A tap reads each region's replication
stream, as a replica would (PSYNC), and the replicator applies every write to
the other regions under the merge rules of Redis Enterprise Active-Active
(docs/ACTIVE-ACTIVE.md has the rules and their sources):

- strings and hash fields: last write wins, by the writing region's wall clock
  (each region's clock can be skewed here), a tie going to the lower region;
- counters (INCRBY, HINCRBY, ZINCRBY): the increments add up;
- sets, sorted sets, hash fields: add and remove apply as they come (a union);
- expiry: the longest TTL wins (a key without one keeps none);
- streams: every region's entries are kept; consumer-group creation and
  acknowledgements replicate, consumers and pending lists (XCLAIM, SETID) do not;
- Functions are not replicated (each region loads its own library), nor is
  pub/sub.

A link between two regions can go down; what the source writes meanwhile waits
in the link's backlog and is applied, in order, when the link heals. A tap
acknowledges (REPLCONF ACK) only what every link has applied, so a write a
client confirmed with WAIT 1 is in every region: what WAIT means here.

A command the rules do not cover is recorded in ``Replicator.unknown`` (tests
assert it stays empty): nothing is replicated by a guess.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from inferis.client.protocol import keys
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.lua import ensure_library

# The key the replicator sets first in every transaction it applies, so that the
# destination's own tap knows the transaction is an echo, not a local write.
MARKER = "__aa__:applying"

Command = list[bytes]

COUNTERS = {b"INCR", b"INCRBY", b"DECR", b"DECRBY", b"HINCRBY", b"ZINCRBY"}
AS_THEY_COME = {
    b"DEL", b"UNLINK", b"HDEL", b"SADD", b"SREM", b"ZADD", b"ZREM", b"ZREMRANGEBYSCORE",
    b"ZREMRANGEBYRANK", b"XDEL", b"XTRIM", b"XACK", b"PERSIST", b"RPUSH", b"LPUSH",
    b"SETNX", b"HSETNX",
}
NOT_REPLICATED = {
    b"SELECT", b"PING", b"PUBLISH", b"FUNCTION", b"XCLAIM", b"XAUTOCLAIM", b"XSETID",
    b"REPLCONF", b"MULTI", b"EXEC",
}


class _Reader:
    """RESP from the replication stream, counting the bytes it consumes."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")
        self.consumed = 0

    def line(self) -> bytes:
        data = self._file.readline()
        if not data:
            raise EOFError("the region closed its replication stream")
        self.consumed += len(data)
        return data[:-2]

    def exactly(self, n: int) -> bytes:
        data = self._file.read(n)
        if data is None or len(data) < n:
            raise EOFError("the region closed its replication stream")
        self.consumed += n
        return data

    def command(self) -> Command:
        head = self.line()
        if not head.startswith(b"*"):
            raise ValueError(f"unexpected replication data {head[:40]!r}")
        parts = []
        for _ in range(int(head[1:])):
            size = int(self.line()[1:])
            parts.append(self.exactly(size))
            self.exactly(2)
        return parts


@dataclass
class Write:
    """One write (a command, or a transaction's commands) of a region, as its tap saw it."""

    origin: str
    commands: list[Command]
    ts_ms: float  # the origin's wall clock (skewed)
    end_offset: int


class Tap(threading.Thread):
    """Reads one region's replication stream and queues its local writes."""

    def __init__(self, region: Region) -> None:
        super().__init__(daemon=True, name=f"tap-{region.name}")
        self.region = region
        self.writes: queue.Queue[Write] = queue.Queue()
        self.applied_offset = 0  # set by the replicator: every link has applied up to here
        self.seen_end = 0  # the offset of everything read so far (writes queued first)
        self.last_seen = time.monotonic()
        self.error: BaseException | None = None
        self._sock = socket.create_connection(("127.0.0.1", region.server.port))
        self._stopping = False

    def _send(self, *args: str | bytes) -> None:
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            data = a.encode() if isinstance(a, str) else a
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # surfaced by Replicator.check()
            if not self._stopping:
                self.error = exc

    def _follow(self) -> None:
        reader = _Reader(self._sock)
        self._send("REPLCONF", "listening-port", "1")
        assert reader.line() == b"+OK"
        self._send("REPLCONF", "capa", "psync2")
        assert reader.line() == b"+OK"
        self._send("PSYNC", "?", "-1")
        reply = reader.line()
        while not reply:  # keep-alive newlines while the snapshot is made
            reply = reader.line()
        assert reply.startswith(b"+FULLRESYNC"), reply
        offset = int(reply.split()[2])
        size = reader.line()
        while not size:
            size = reader.line()
        reader.exactly(int(size[1:]))  # the snapshot: the regions start empty, it is skipped
        reader.consumed = 0
        threading.Thread(target=self._acknowledge, daemon=True).start()
        pending: list[Command] | None = None  # the commands of an open MULTI
        while not self._stopping:
            command = reader.command()
            name = command[0].upper()
            self.last_seen = time.monotonic()
            if name == b"MULTI":
                pending = []
                continue
            if name == b"EXEC":
                batch, pending = pending or [], None
            elif pending is not None:
                pending.append(command)
                continue
            else:
                batch = [command]
            end = offset + reader.consumed
            echoed = bool(batch) and batch[0][0].upper() == b"SET" and (
                batch[0][1] == MARKER.encode()
            )
            writes = [c for c in batch if c[0].upper() not in (b"PING", b"SELECT")]
            if writes and not echoed:  # an echo is the replicator's own apply
                self.writes.put(Write(self.region.name, writes, self.region.clock_ms(), end))
            # after the write is queued: the replicator never acknowledges past a write
            # it has not seen
            self.seen_end = end

    def _acknowledge(self) -> None:
        while not self._stopping:
            with contextlib.suppress(OSError):
                self._send("REPLCONF", "ACK", str(self.applied_offset))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._sock.close()


@dataclass
class Region:
    name: str
    index: int  # its place in inferis:regions (1-based): the tie-break order
    server: EmbeddedRedis
    skew_ms: float = 0.0  # how far this region's clock is off

    def clock_ms(self) -> float:
        return time.time() * 1000 + self.skew_ms

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.server.port, password=self.server.password)


@dataclass
class _Link:
    up: bool = True
    backlog: list[Write] = field(default_factory=list)


class Replicator:
    """Carries every region's writes to the others, under the merge rules above."""

    def __init__(self, regions: list[Region]) -> None:
        self.regions = {r.name: r for r in regions}
        self.links = {(a.name, b.name): _Link() for a in regions for b in regions if a != b}
        self._conns = {r.name: r.client() for r in regions}
        # last-write-wins state per destination: key or (key, field) -> (ts, region index)
        self._stamps: dict[str, dict[Any, tuple[float, int]]] = {r.name: {} for r in regions}
        self._taps = {r.name: Tap(r) for r in regions}
        self.unknown: set[bytes] = set()
        self.applied = 0
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._pump_forever, daemon=True, name="replicator")

    def start(self) -> Replicator:
        for tap in self._taps.values():
            tap.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(5)
        for tap in self._taps.values():
            tap.stop()

    def check(self) -> None:
        for tap in self._taps.values():
            if tap.error is not None:
                raise RuntimeError(f"the tap of {tap.region.name} failed") from tap.error

    # ------------------------------------------------------------ the network

    def cut(self, a: str, b: str) -> None:
        """The link between regions ``a`` and ``b`` goes down, both ways."""
        with self._lock:
            self.links[a, b].up = self.links[b, a].up = False

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        with self._lock:
            for (x, y), link in self.links.items():
                if a is None or {x, y} == {a, b}:
                    link.up = True

    def isolate(self, name: str) -> None:
        for other in self.regions:
            if other != name:
                self.cut(name, other)

    def settle(self, quiet_s: float = 0.4, timeout_s: float = 30.0) -> None:
        """Wait until no region has written for ``quiet_s`` and every link that is up
        has applied its backlog."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            now = time.monotonic()
            with self._lock:
                drained = all(not link.backlog for link in self.links.values() if link.up)
            queued = any(not tap.writes.empty() for tap in self._taps.values())
            quiet = all(now - tap.last_seen >= quiet_s for tap in self._taps.values())
            if drained and not queued and quiet:
                return
            if now > deadline:
                raise TimeoutError("the regions did not settle")
            time.sleep(0.05)

    # ------------------------------------------------------------ carrying writes

    def _pump_forever(self) -> None:
        while not self._stopping:
            try:
                moved = self.pump()
            except Exception as exc:  # surfaced by check() through a tap
                first = next(iter(self._taps.values()))
                first.error = exc
                return
            if not moved:
                time.sleep(0.003)

    def pump(self) -> int:
        moved = 0
        with self._lock:
            for name, tap in self._taps.items():
                while True:
                    try:
                        write = tap.writes.get_nowait()
                    except queue.Empty:
                        break
                    self._stamp(name, write)
                    for (src, _dst), link in self.links.items():
                        if src == name:
                            link.backlog.append(write)
            for (_src, dst), link in self.links.items():
                if link.up and link.backlog:
                    for write in link.backlog:
                        self._apply(dst, write)
                        moved += 1
                    link.backlog.clear()
            for name, tap in self._taps.items():
                seen = tap.seen_end  # read before looking at the queue (see Tap)
                waiting = [w.end_offset for (src, _), link in self.links.items() if src == name
                           for w in link.backlog[:1]]
                if waiting:
                    tap.applied_offset = max(tap.applied_offset, min(waiting) - 1)
                elif tap.writes.empty():
                    tap.applied_offset = max(tap.applied_offset, seen)
        self.applied += moved
        return moved

    def _stamp(self, region: str, write: Write) -> None:
        """A region's own write sets the last-write-wins state there too."""
        order = (write.ts_ms, -self.regions[region].index)
        stamps = self._stamps[region]
        for command in write.commands:
            for target in _lww_targets(command):
                stamps[target] = max(stamps.get(target, order), order)

    def _apply(self, dst: str, write: Write) -> None:
        order = (write.ts_ms, -self.regions[write.origin].index)
        stamps = self._stamps[dst]
        conn = self._conns[dst]
        out: list[Command] = []
        for command in write.commands:
            out += self._merge(conn, stamps, order, command)
        if not out:
            return
        pipe = conn.pipeline(transaction=True)
        pipe.execute_command("SET", MARKER, write.origin)
        for command in out:
            pipe.execute_command(*command)
        pipe.execute_command("DEL", MARKER)
        results = pipe.execute(raise_on_error=False)
        retry = []
        for command, result in zip(out, results[1:-1], strict=True):
            if isinstance(result, redis.ResponseError):
                text = str(result)
                if command[0].upper() == b"XADD" and "equal or smaller" in text:
                    retry.append(_xadd_with_new_id(command))  # entries of two regions interleave
                elif command[0].upper() == b"XGROUP" and "BUSYGROUP" in text:
                    pass  # the group was created here too
                else:
                    raise RuntimeError(f"applying {command[:3]!r} in {dst}: {text}")
        if retry:
            pipe = conn.pipeline(transaction=True)
            pipe.execute_command("SET", MARKER, write.origin)
            for command in retry:
                pipe.execute_command(*command)
            pipe.execute_command("DEL", MARKER)
            pipe.execute()

    def _merge(
        self, conn: redis.Redis, stamps: dict[Any, tuple[float, int]],
        order: tuple[float, int], command: Command,
    ) -> list[Command]:
        name = command[0].upper()
        if name in NOT_REPLICATED:
            return []
        if name in COUNTERS or name in AS_THEY_COME:
            return [command]
        if name == b"SET":
            key = command[1]
            if stamps.get(key, order) > order:
                return []  # a later write (by wall clock) is there already
            stamps[key] = order
            return [command]
        if name == b"HSET":
            key, kept = command[1], []
            for f, v in zip(command[2::2], command[3::2], strict=True):
                if stamps.get((key, f), order) <= order:
                    stamps[key, f] = order
                    kept += [f, v]
            return [[b"HSET", key, *kept]] if kept else []
        if name in (b"PEXPIREAT", b"EXPIREAT"):
            at_ms = int(command[2]) * (1 if name == b"PEXPIREAT" else 1000)
            current = int(conn.execute_command("PEXPIRETIME", command[1]))
            if current == -1 or current > at_ms:
                return []  # the longest TTL wins (none is the longest)
            return [[b"PEXPIREAT", command[1], str(at_ms).encode()]]
        if name == b"XADD":
            return [command]
        if name == b"XGROUP":
            sub = command[1].upper()
            if sub in (b"CREATE", b"DESTROY"):
                return [command]
            return []  # consumers and last-delivered ids stay in their region
        self.unknown.add(name)
        return []


def _lww_targets(command: Command) -> Iterator[Any]:
    name = command[0].upper()
    if name == b"SET":
        yield command[1]
    elif name == b"HSET":
        for f in command[2::2]:
            yield (command[1], f)


def _xadd_with_new_id(command: Command) -> Command:
    """The same XADD with an ID the destination makes (``*``)."""
    args = list(command)
    i = 2
    while args[i].upper() in (b"NOMKSTREAM", b"MAXLEN", b"MINID"):
        if args[i].upper() == b"NOMKSTREAM":
            i += 1
            continue
        i += 1
        if args[i] in (b"=", b"~"):
            i += 1
        i += 1
        if args[i].upper() == b"LIMIT":
            i += 2
    args[i] = b"*"
    return args


@contextlib.contextmanager
def regions(
    base: Path, names: tuple[str, ...] = ("eu", "us"), skews_ms: tuple[float, ...] = ()
) -> Iterator[tuple[list[Region], Replicator]]:
    """Start one redis-server per region (empty, the library loaded, the regions
    named), then the replicator; stop everything at the end."""
    started: list[Region] = []
    replicator = None
    try:
        for index, name in enumerate(names, start=1):
            server = EmbeddedRedis(base / name)
            server.start()
            skew = skews_ms[index - 1] if index - 1 < len(skews_ms) else 0.0
            region = Region(name, index, server, skew)
            started.append(region)
            conn = region.client()
            ensure_library(conn)
            conn.set(keys.REGIONS, ",".join(names))
            conn.close()
        replicator = Replicator(started).start()
        yield started, replicator
    finally:
        if replicator is not None:
            replicator.stop()
        for region in started:
            region.server.stop()
