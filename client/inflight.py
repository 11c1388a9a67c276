"""Requests in flight: who waits for which answer, and where answers come back.

Each client owns one reply stream per partition it sends to. One reader
blocks on all of them (``XREAD BLOCK``), so any number of requests wait on one
connection without polling; each answer is routed to its waiter by request id.
Shared by both transports, which only move the bytes.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

from .protocol import keys
from .protocol.defaults import REPLY_READ_BLOCK_MS, REPLY_READ_COUNT
from .protocol.replies import RunResult, unpack_answers

Resolver = Callable[[RunResult], None]


class RequestIds:
    """Request ids unique per client: ``<client id>.<counter>``."""

    def __init__(self, caller: str = "") -> None:
        # <caller>-<random>: the Functions count queued requests per caller (and an
        # ACL pattern on reply streams can pin a user to its caller name).
        random_part = os.urandom(6).hex()
        self.client_id = f"{caller}-{random_part}" if caller else random_part
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.client_id}.{next(self._counter)}"


class InFlight:
    """Waiters by request id, and the read position of each reply stream."""

    def __init__(self, client_id: str, region: str = "") -> None:
        self._client_id = client_id
        self.region = region  # Active-Active: the region whose partition keys it uses
        self.streams: dict[int, str] = {}
        self._last_ids: dict[str, str] = {}
        self._consumed: dict[str, list[str]] = {}
        self._waiters: dict[str, Resolver] = {}
        # Answers for no waiter: a second answer to a resent request, or one that
        # came after its caller gave up. Counted so tests can see duplicates.
        self.unmatched = 0

    def reply_stream(self, partition: int) -> str:
        """This client's reply stream on ``partition`` (read from then on)."""
        stream = self.streams.get(partition)
        if stream is None:
            stream = self.streams[partition] = keys.reply_stream(
                partition, self._client_id, self.region
            )
            self._last_ids[stream] = "0-0"
        return stream

    def expect(self, rid: str, resolver: Resolver) -> None:
        self._waiters[rid] = resolver

    def is_waiting(self, rid: str) -> bool:
        return rid in self._waiters

    def forget(self, rid: str) -> None:
        self._waiters.pop(rid, None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def read_commands(self, partition: int, block_ms: int = REPLY_READ_BLOCK_MS) -> list[list[Any]]:
        """For one partition's reply stream (its own slot): XDEL of the answers already
        handled, then the blocking XREAD."""
        stream = self.reply_stream(partition)
        commands: list[list[Any]] = []
        consumed = self._consumed.pop(stream, None)
        if consumed:
            commands.append(["XDEL", stream, *consumed])
        commands.append([
            "XREAD", "COUNT", REPLY_READ_COUNT, "BLOCK", block_ms, "STREAMS",
            stream, self._last_ids[stream],
        ])
        return commands

    def partitions(self) -> list[int]:
        """Partitions with a reply stream (the ones this client has sent runs to)."""
        return list(self.streams)

    def dispatch(self, xread_reply: Any) -> int:
        """Route every answer of an XREAD reply (RESP2); returns how many it resolved."""
        resolved = 0
        for raw_stream, entries in xread_reply or ():
            stream = raw_stream.decode() if isinstance(raw_stream, bytes) else raw_stream
            consumed = self._consumed.setdefault(stream, [])
            for raw_id, fields in entries:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
                self._last_ids[stream] = entry_id
                consumed.append(entry_id)
                payload = _field(fields, b"d")
                if payload is None:
                    continue
                for result in unpack_answers(payload):
                    resolver = self._waiters.pop(result.rid, None)
                    if resolver is None:
                        self.unmatched += 1
                    else:
                        resolver(result)
                        resolved += 1
        return resolved


def _field(fields: Any, name: bytes) -> bytes | None:
    """One field of a raw stream entry (a flat [name, value, ...] list in RESP2)."""
    if isinstance(fields, dict):
        return fields.get(name)
    for i in range(0, len(fields or ()) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return None
