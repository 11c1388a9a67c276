"""Reply payloads and the atomic complete/dead-letter calls (docs/PROTOCOL.md).

SDK clients get msgpack on their reply stream, with small outputs inline so
``predict`` needs no second read. Callers that gave no reply stream (e.g.
redis-cli) get one JSON line pushed to the request's ``done`` list.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

from .executor import Outcome
from .requests import REPLY_STREAM, RunRequest

# Outputs up to this size ride inside the reply; larger ones are read by key.
INLINE_OUTPUT_LIMIT = 256 * 1024


def kept_keys(outcome: Outcome) -> set[str]:
    """Output keys to write. An EPHEMERAL request's small auto-named outputs ride in
    its reply only; outputs the caller named, or that a done list points to, are kept."""
    request = outcome.request
    if not request.ephemeral or request.outputs or request.reply_mode != REPLY_STREAM:
        return {key for _, key, _ in outcome.outputs}
    return {key for _, key, blob in outcome.outputs if len(blob) > INLINE_OUTPUT_LIMIT}


def payload(outcome: Outcome, queue_us: int, kept: set[str] | None = None) -> bytes:
    """The reply; ``kept`` is :func:`kept_keys` when the caller already has it."""
    request = outcome.request
    ok = outcome.error is None
    if request.reply_mode == REPLY_STREAM:
        msg: dict[str, Any] = {
            "rid": request.rid,
            "ok": ok,
            "model": request.model,
            "version": outcome.version,
            "timing": {
                "queue_us": queue_us, "run_us": outcome.run_us, "batch": outcome.batch_size
            },
        }
        if ok:
            kept = kept_keys(outcome) if kept is None else kept
            msg["outputs"] = [
                [name, key if key in kept else None,
                 blob if len(blob) <= INLINE_OUTPUT_LIMIT else None]
                for name, key, blob in outcome.outputs
            ]
        else:
            assert outcome.error is not None
            msg["code"] = outcome.error.code
            msg["error"] = outcome.error.message
        return msgpack.packb(msg)
    doc: dict[str, Any] = {"rid": request.rid, "status": "ok" if ok else "error"}
    doc["model"] = request.model
    doc["version"] = outcome.version
    if ok:
        doc["outputs"] = {name: key for name, key, _ in outcome.outputs}
    else:
        assert outcome.error is not None
        doc["code"] = outcome.error.code
        doc["error"] = outcome.error.message
    return json.dumps(doc).encode()


def complete_command(outcomes: list[tuple[Outcome, int]]) -> list[Any]:
    """One FCALL _INFERIS_COMPLETE for a batch of (outcome, queue_us): for each entry,
    acknowledge, write outputs and reply, atomically. All share one request stream."""
    stream = outcomes[0][0].request.stream
    call_keys: list[Any] = [stream]
    args: list[Any] = [len(outcomes)]
    for outcome, queue_us in outcomes:
        request = outcome.request
        kept = kept_keys(outcome)
        writes = [(key, blob) for _, key, blob in outcome.outputs if key in kept]
        call_keys.append(request.reply_key)
        call_keys += [key for key, _ in writes]
        args += [
            request.entry_id, request.reply_mode, request.ttl_ms,
            payload(outcome, queue_us, kept), len(writes),
        ]
        args += [blob for _, blob in writes]
    return ["FCALL", "_INFERIS_COMPLETE", len(call_keys), *call_keys, *args]


def deadletter_command(
    request: RunRequest, deadletter_key: str, outcome: Outcome, reason: str, deliveries: int
) -> list[Any]:
    """FCALL _INFERIS_DEADLETTER: park the entry, tell its caller, acknowledge."""
    return [
        "FCALL", "_INFERIS_DEADLETTER", 3, request.stream, deadletter_key, request.reply_key,
        request.entry_id, request.reply_mode, payload(outcome, 0),
        "rid", request.rid, "model", request.model, "version", request.version,
        "reason", reason, "deliveries", deliveries,
    ]
