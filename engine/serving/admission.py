"""Admission: stream entries in, request records out; what cannot run is settled here.

An entry delivered more often than ``max_deliveries`` (its worker died or hung
on it each time) is dead-lettered without running, and each of its requests
is answered ``EPOISON``. An entry that cannot be read at all is dead-lettered
as malformed. A malformed record inside a readable entry is an ordinary error
answer to its caller.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from inferis.client.protocol.commands import Settlement
from inferis.client.protocol.entries import Entry, MalformedEntry, decode_entry
from inferis.client.protocol.errors import DeadLetteredError

from .. import metrics
from .completion import writes_for
from .request import Request

log = logging.getLogger(__name__)

RawEntry = tuple[str, Mapping[bytes, bytes]]


@dataclass
class Admitted:
    entries: list[Entry] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    settled: list[Settlement] = field(default_factory=list)  # dead letters

    def extend(self, other: Admitted) -> None:
        self.entries += other.entries
        self.requests += other.requests
        self.settled += other.settled


def admit(
    stream: str,
    raw: Sequence[RawEntry],
    max_deliveries: int,
    deliveries: Mapping[str, int] | None = None,
) -> Admitted:
    """Decode ``raw`` entries of ``stream``; ``deliveries`` counts reclaimed ones."""
    admitted = Admitted()
    for entry_id, fields in raw:
        try:
            entry = decode_entry(stream, entry_id, fields)
        except MalformedEntry as exc:
            admitted.settled.append(_malformed(stream, entry_id, fields, exc))
            continue
        entry.deliveries = (deliveries or {}).get(entry_id, 1)
        requests = [Request(spec, entry) for spec in entry.requests]
        if entry.deliveries > max_deliveries:
            admitted.settled.append(_poison(entry, requests))
            continue
        for request in requests:
            if request.spec.problem is not None:
                request.fail(request.spec.problem)
        admitted.entries.append(entry)
        admitted.requests += requests
    return admitted


def _poison(entry: Entry, requests: list[Request]) -> Settlement:
    for request in requests:
        request.fail(DeadLetteredError(
            f"request {request.rid} was delivered {entry.deliveries} times without an answer "
            "(a worker died or hung running it); moved to the dead-letter stream"
        ))
    log.warning(
        "dead-lettering %s on %s (%d requests): delivered %d times",
        entry.entry_id, entry.stream, len(requests), entry.deliveries,
    )
    metrics.DEAD_LETTERED.labels("poison").inc()
    return Settlement(
        entry.entry_id, entry.count, writes_for(entry, requests, queue_us=0),
        reason="poison", deliveries=entry.deliveries,
    )


def _malformed(
    stream: str, entry_id: str, fields: Mapping[bytes, bytes], exc: MalformedEntry
) -> Settlement:
    log.warning("dead-lettering malformed entry %s on %s: %s", entry_id, stream, exc.message)
    metrics.DEAD_LETTERED.labels("malformed").inc()
    requests = fields.get(b"n", b"0")
    return Settlement(
        entry_id, int(requests) if requests.isdigit() else 0, [],
        reason=f"malformed: {exc.message}",
    )
