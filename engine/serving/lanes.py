"""Lanes: one per partition a worker serves, each with a connection of its own.

A lane's blocking ``XREADGROUP`` goes out on its own connection (with the
completions it owes, in the same write), so one thread waits on many
partitions at once: in a Redis Cluster the partitions live in different slots,
and one ``XREADGROUP`` may only name streams of one slot. The worker writes a
read on every idle lane, then polls their sockets and serves whichever answers.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterable
from typing import Any

import redis

from inferis.client.connection import pack
from inferis.client.protocol import keys
from inferis.client.protocol.commands import Command
from inferis.client.protocol.defaults import GROUP


class Lane:
    """One partition: its stream, its connection and the completions it owes."""

    def __init__(self, partition: int, connect: Callable[[str], Any]) -> None:
        self.partition = partition
        self.stream = keys.request_stream(partition)
        self._connect = connect
        self.conn: Any = None
        self.unsent: list[Command] = []  # idempotent: resent after a reconnect
        self.awaiting = 0  # replies of a written read still to come (0: idle)

    def write_read(self, consumer: str, count: int, block_ms: int) -> None:
        """Send what this lane owes and a blocking read, without waiting."""
        if self.conn is None:
            self.conn = self._connect(self.stream)
        commands = [c.as_args() for c in self.unsent]
        commands.append([
            "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count, "BLOCK", block_ms,
            "STREAMS", self.stream, ">",
        ])
        self.conn.send_packed_command([pack(commands)], check_health=False)
        self.awaiting = len(commands)

    def read_replies(self) -> list[Any]:
        """The replies of the last write (errors as values); the lane is idle again and
        owes nothing more."""
        replies: list[Any] = []
        for _ in range(self.awaiting):
            try:
                replies.append(self.conn.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        self.awaiting = 0
        self.unsent = []
        return replies

    def fileno(self) -> int:
        return int(self.conn._sock.fileno())

    def close(self) -> None:
        """Drop the connection (after an error); what it owes stays owed."""
        if self.conn is not None:
            try:
                self.conn.disconnect()
            finally:
                self.conn = None
        self.awaiting = 0


def wait_readable(lanes: Iterable[Lane], timeout_ms: int) -> list[Lane]:
    """The lanes whose read has answered (a reply is waiting), within ``timeout_ms``."""
    waiting = {lane.fileno(): lane for lane in lanes if lane.awaiting}
    if not waiting:
        return []
    poller = select.poll()
    for fd in waiting:
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return [waiting[fd] for fd, _ in poller.poll(timeout_ms)]
