"""Lanes: one per partition a worker serves, each with a connection of its own.

A lane's blocking ``XREADGROUP`` goes out on its own connection (with the
completions it owes, in the same write), so one thread waits on many
partitions at once: in a Redis Cluster the partitions live in different slots,
and one ``XREADGROUP`` may only name streams of one slot. The worker writes a
read on every idle lane, then polls their sockets and serves whichever answers.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from inferis.client.connection import pack
from inferis.client.protocol import keys
from inferis.client.protocol.backoff import Backoff
from inferis.client.protocol.commands import Command, Plain
from inferis.client.protocol.defaults import GROUP


class Lane:
    """One partition: its stream, its connection and the completions it owes.

    A write carries the completions owed and a blocking read. Their replies come
    in that order; the completions' at once, the read's when work arrives, so the
    lane takes the first as soon as its socket is readable and the read's only
    when it is there: one lane waiting never holds up the others.
    """

    def __init__(self, partition: int, connect: Callable[[str], Any], region: str = "") -> None:
        self.partition = partition
        self.stream = keys.request_stream(partition, region)
        self._connect = connect
        self.conn: Any = None
        # Completions, and the cache writes that follow them: idempotent, so resent
        # after a reconnect.
        self.unsent: list[Command | Plain] = []
        self.sent: list[Command | Plain] = []  # written, their replies not yet read
        self.reading = False  # a blocking read is out
        # A read was cut off (its connection dropped): what it delivered is pending
        # under our name, and the next read asks for our pending entries (id 0)
        # rather than waiting the reclaim timeout for them.
        self.recover = False
        # After a connection error only this lane waits (its node may be dying,
        # the others are not): no write before retry_at.
        self.retry_at = 0.0
        self.failures = 0  # in a row
        self._backoff = Backoff(first=0.1, cap=1.0)

    @property
    def owes(self) -> bool:
        return bool(self.unsent or self.sent)

    def write_read(self, consumer: str, count: int, block_ms: int | None) -> None:
        """Send what this lane owes and a read (blocking unless ``block_ms`` is None),
        without waiting."""
        if self.conn is None:
            self.conn = self._connect(self.stream)
        commands = [c.as_args() for c in self.unsent]
        block = ["BLOCK", block_ms] if block_ms is not None and not self.recover else []
        commands.append([
            "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count, *block,
            "STREAMS", self.stream, "0" if self.recover else ">",
        ])
        self.recover = False
        self.conn.send_packed_command([pack(commands)], check_health=False)
        self.sent, self.unsent = self.unsent, []
        self.reading = True

    def take_settled(self) -> list[tuple[Command | Plain, Any]]:
        """Each completion sent with its reply (errors as values); nothing owed then."""
        settled = [(command, self._read_one()) for command in self.sent]
        self.sent = []
        return settled

    def take_read(self) -> Any:
        """The read's reply if it has come (a batch, nil, or an error), else PENDING."""
        if self.sent:
            raise RuntimeError("take the completions' replies first")
        if not self.conn.can_read(timeout=0):
            return PENDING
        return self.finish_read()

    def finish_read(self) -> Any:
        """The read's reply, waiting for it (its BLOCK bounds the wait)."""
        self.reading = False
        return self._read_one()

    def _read_one(self) -> Any:
        try:
            return self.conn.read_response()
        except redis.ResponseError as exc:  # that reply was read whole: keep going
            return exc

    @property
    def ready(self) -> bool:
        return time.monotonic() >= self.retry_at

    def failed(self) -> None:
        """The connection broke: drop it, keep what is owed, wait a little."""
        self.close()
        self.failures += 1
        self.retry_at = time.monotonic() + self._backoff.next()

    def succeeded(self) -> None:
        self.failures = 0
        self._backoff.reset()

    def fileno(self) -> int:
        return int(self.conn._sock.fileno())

    def close(self) -> None:
        """Drop the connection (after an error); what it owes stays owed."""
        self.unsent = [*self.sent, *self.unsent]
        self.sent = []
        self.recover = self.recover or self.reading
        self.reading = False
        if self.conn is not None:
            try:
                self.conn.disconnect()
            except OSError:
                pass  # a socket already broken has nothing to release
            finally:
                self.conn = None


# What take_read returns while the read is still blocked in Redis.
PENDING = object()


def wait_readable(lanes: Iterable[Lane], timeout_ms: int) -> list[Lane]:
    """The lanes whose read has answered (a reply is waiting), within ``timeout_ms``."""
    waiting = {lane.fileno(): lane for lane in lanes if lane.reading}
    if not waiting:
        return []
    poller = select.poll()
    for fd in waiting:
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return [waiting[fd] for fd, _ in poller.poll(timeout_ms)]
