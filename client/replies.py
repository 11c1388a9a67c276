"""Routing of worker replies to waiting callers, shared by both clients.

Each client owns one reply stream per partition. A single reader blocks on
them (XREAD BLOCK), so any number of requests wait on one connection without
polling; each reply is routed to the caller's waiter by request id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import keys
from .core import RunResult, parse_run_reply

Resolver = Callable[[RunResult], None]

READ_BLOCK_MS = 1000
READ_COUNT = 1024


class ReplyRouter:
    """Tracks waiters by request id and the read position of each reply stream."""

    def __init__(self, client_id: str, partitions: Sequence[int]) -> None:
        self.streams = {p: keys.reply_stream(p, client_id) for p in partitions}
        self._last_ids = {s: "0-0" for s in self.streams.values()}
        self._waiters: dict[str, Resolver] = {}
        self._consumed: dict[str, list[str]] = {}
        # Replies for no waiter: a second answer to a resent request, or one that
        # came after its caller gave up. Counted so tests can see duplicates.
        self.unmatched = 0

    def expect(self, rid: str, resolver: Resolver) -> None:
        self._waiters[rid] = resolver

    def forget(self, rid: str) -> None:
        self._waiters.pop(rid, None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def read_commands(self) -> list[list[Any]]:
        """XDEL of the entries already handled, then the blocking XREAD."""
        commands: list[list[Any]] = []
        for stream, ids in self._consumed.items():
            if ids:
                commands.append(["XDEL", stream, *ids])
        self._consumed = {}
        streams = list(self._last_ids)
        commands.append(
            [
                "XREAD", "COUNT", READ_COUNT, "BLOCK", READ_BLOCK_MS, "STREAMS",
                *streams, *(self._last_ids[s] for s in streams),
            ]
        )
        return commands

    def dispatch(self, xread_reply: Any) -> None:
        """Route every entry of an XREAD reply (RESP2 list or RESP3 map)."""
        if not xread_reply:
            return
        items = xread_reply.items() if isinstance(xread_reply, dict) else xread_reply
        for raw_stream, entries in items:
            stream = raw_stream.decode() if isinstance(raw_stream, bytes) else raw_stream
            for raw_id, fields in entries:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
                self._last_ids[stream] = entry_id
                self._consumed.setdefault(stream, []).append(entry_id)
                payload = fields.get(b"d") if isinstance(fields, dict) else None
                if payload is None:
                    continue
                result = parse_run_reply(payload)
                resolver = self._waiters.pop(result.rid, None)
                if resolver is None:
                    self.unmatched += 1
                else:
                    resolver(result)
