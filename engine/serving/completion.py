"""Completion: answers written, entries acknowledged, the batch recorded, in one call.

Each request becomes an :class:`Answer`. An entry with a reply stream gets one
reply for all its requests (the caller's coalesced call comes back as one
stream entry); requests without one get a JSON line on their done list.
Outputs are written as keys only when the caller named the keys, kept them
(not ``EPHEMERAL``), answers on a done list (which names keys), or when they
are too large to travel in the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from inferis.client.protocol import keys
from inferis.client.protocol.commands import Command, Settlement, Write, complete
from inferis.client.protocol.defaults import DEFAULT_TTL_MS, INLINE_LIMIT
from inferis.client.protocol.entries import Entry
from inferis.client.protocol.errors import BackendError, InferisError
from inferis.client.protocol.replies import Answer, pack_answers
from inferis.client.protocol.tensor import encode_tensor

from .. import metrics
from .request import Request

log = logging.getLogger(__name__)

def settle(
    stream: str,
    entries: Sequence[Entry],
    requests: Sequence[Request],
    dead: Sequence[Settlement],
    now_ms: int,
) -> Command | None:
    """The one ``_INFERIS_COMPLETE`` call for a batch of ``stream``'s entries."""
    by_entry: dict[str, list[Request]] = {e.entry_id: [] for e in entries}
    for request in requests:
        by_entry[request.entry.entry_id].append(request)
    settlements = list(dead)
    for entry in entries:
        queue_us = max(0, now_ms - entry.t0_ms) * 1000
        writes = writes_for(entry, by_entry[entry.entry_id], queue_us)
        settlements.append(Settlement(entry.entry_id, entry.count, writes))
    return complete(stream, settlements) if settlements else None


def writes_for(entry: Entry, requests: Sequence[Request], queue_us: int) -> list[Write]:
    """The writes that answer ``requests`` of ``entry`` (in the caller's order)."""
    writes: list[Write] = []
    answers = []
    for request in requests:
        answer, outputs = _answer(entry, request, queue_us)
        answers.append(answer)
        ttl = request.spec.ttl_ms
        writes += [Write("S", key, ttl, blob) for key, blob in outputs]
        if not entry.reply:
            writes.append(Write(
                "L", keys.done_list(entry.base, request.rid), ttl or DEFAULT_TTL_MS,
                answer.as_json_line(),
            ))
    if entry.reply and answers:
        ttl = max(r.spec.ttl_ms for r in requests) or DEFAULT_TTL_MS
        writes.append(Write("X", entry.reply, ttl, pack_answers(answers)))
    return writes


def _answer(
    entry: Entry, request: Request, queue_us: int
) -> tuple[Answer, list[tuple[str, bytes]]]:
    """The request's answer, and the output keys to write for it."""
    spec, info = request.spec, request.info
    answer = Answer(
        spec.rid, spec.model, info.version if info else 0, info.digest if info else "",
        queue_us=queue_us, run_us=request.run_us, batch=request.batch_size,
    )
    if request.error is None:
        try:
            # A cached answer comes encoded; a run's outputs are encoded once, here.
            encoded = request.encoded = request.encoded or _encoded_outputs(request)
        except InferisError as exc:
            request.fail(exc)
    if request.error is not None:
        answer.error, answer.run_us, answer.batch = request.error, 0, 1
        return answer, []
    answer.cached = request.cache is not None and request.cache.hit
    named = bool(spec.outputs)
    keep_all = named or not spec.ephemeral or not entry.reply
    written: list[tuple[str, bytes]] = []
    for position, (name, blob) in enumerate(encoded):
        large = len(blob) > INLINE_LIMIT
        key = spec.outputs[position].key if named else keys.output_key(entry.base, spec.rid, name)
        if keep_all or large:
            written.append((key, blob))
        answer.outputs.append((name, key if keep_all or large else None, None if large else blob))
    return answer, written


def _encoded_outputs(request: Request) -> list[tuple[str, bytes]]:
    encoded = []
    for name in request.output_names:
        if name not in request.results:
            raise BackendError(f"{request.info.label} returned no output {name!r}")  # type: ignore[union-attr]
        try:
            encoded.append((name, encode_tensor(request.results[name])))
        except InferisError as exc:
            raise BackendError(f"output {name} cannot be stored: {exc.message}") from None
        except Exception as exc:
            raise BackendError(
                f"output {name} cannot be stored: {type(exc).__name__}: {exc}"
            ) from None
    return encoded


def record(
    requests: Sequence[Request], started_ms: int, answered_ms: int, stats: metrics.ModelStats
) -> None:
    """Metrics and per-model stats for answered requests (backend time is recorded
    per backend call, by the executor)."""
    counts: dict[tuple[metrics.Series, str], int] = {}
    for request in requests:
        info, spec = request.info, request.spec
        status = "ok" if request.error is None else request.error.code
        t0 = request.entry.t0_ms
        queue_s = max(0, started_ms - t0) / 1000
        series = metrics.series(spec.model, str(info.version)) if info else metrics.UNRESOLVED
        counts[series, status] = counts.get((series, status), 0) + 1
        series.queue_wait.observe(queue_s)
        series.end_to_end.observe(max(0, answered_ms - t0) / 1000)
        if info is not None:
            stats.record(spec.model, info.version, request.error is None, request.run_us,
                         int(queue_s * 1e6))
            if request.cache is not None:
                stats.record_cache(spec.model, info.version, request.cache.hit)
    for (series, status), n in counts.items():
        series.requests(status).inc(n)
