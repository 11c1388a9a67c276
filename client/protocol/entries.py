"""Request records and the stream entries that carry them: encode and decode side by side.

A stream entry (docs/PROTOCOL.md §5) carries the requests of one call: one
for ``MODELRUN``, up to ``MAX_CALL_REQUESTS`` for ``MODELRUNMANY``. Its fields:

    t0      Redis time (ms) when the call was enqueued; deadlines count from it
    reply   the caller's reply stream, or "" (each request is answered on its done list)
    n       how many requests the entry holds
    q       a msgpack array of request records (below)
    @<key>  a stored input a request passes by key, as read at enqueue: the encoded
            tensor when it is at most INLINE_LIMIT bytes, "" when it is larger (the
            worker reads it), "-" when it was missing, "!" when it was not a string

A request record is a msgpack map packed with string types only (Redis Lua's
cmsgpack reads no ``bin`` type, and the Functions library writes these records
too)::

    id       request id (1-64 of letters, digits, _ . -); "" names it by its entry id
    model    model name
    ver      version: number, "latest"/"" or an alias
    timeout  ms after t0 that the request is still worth running
    ttl      ms that keys written for the request live (0: no expiry)
    eph      true: small tensors are not written as keys (travel in entry and reply)
    in       [[name or "", key or "", data]...]: data is the encoded tensor, or
             absent when the input is passed by key
    out      [[name or "", key]...]: output keys the caller chose; [] writes
             every output under <tag>:r:<id>:out:<name>
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from . import keys
from .defaults import MAX_TIMEOUT_MS, MAX_TTL_MS
from .errors import ArgumentError, InferisError

# Markers of @<key> fields for inputs passed by key (see the module docstring).
REF_LARGE = b""
REF_MISSING = b"-"
REF_NOT_STRING = b"!"
REF_PREFIX = "@"


@dataclass(frozen=True, slots=True)
class InputSlot:
    name: str  # "" binds by position
    key: str  # the stored tensor's key for an input by key; "" for inline data
    data: bytes | None = None  # the encoded tensor, when sent inline


@dataclass(frozen=True, slots=True)
class OutputSlot:
    name: str  # "" takes the model's outputs in order
    key: str


@dataclass(slots=True)
class RunRequest:
    """What one caller asked for: the same object on both sides of the stream."""

    rid: str
    model: str
    version: str = ""
    timeout_ms: int = 0
    ttl_ms: int = 0
    ephemeral: bool = True
    inputs: list[InputSlot] = field(default_factory=list)
    outputs: list[OutputSlot] = field(default_factory=list)
    # The unit (a user id, say) a split alias is sticky by; "" picks an arm at random.
    unit: str = ""
    # Set by the worker when it decodes the entry:
    deadline_ms: int = 0
    problem: InferisError | None = None  # a malformed record: answered with this error

    def record(self) -> dict[str, Any]:
        """The wire record (a map) for :func:`pack_records`."""
        return {
            "id": self.rid,
            "model": self.model,
            "ver": self.version,
            "timeout": self.timeout_ms,
            "ttl": self.ttl_ms,
            "eph": self.ephemeral,
            "in": [
                [s.name, s.key] if s.data is None else [s.name, s.key, s.data]
                for s in self.inputs
            ],
            "out": [[s.name, s.key] for s in self.outputs],
            **({"unit": self.unit} if self.unit else {}),
        }

    def payload_bytes(self) -> int:
        return sum(len(s.data) for s in self.inputs if s.data is not None)


def pack_records(requests: Iterable[RunRequest]) -> bytes:
    """The ``q`` field: records packed with str types only (for Redis Lua's cmsgpack)."""
    return msgpack.packb([r.record() for r in requests], use_bin_type=False)


@dataclass(slots=True)
class Entry:
    """One stream entry as a worker reads it: the unit Redis delivers and acknowledges."""

    stream: str
    entry_id: str
    t0_ms: int
    reply: str  # the caller's reply stream, "" for done lists
    requests: list[RunRequest]
    refs: dict[str, bytes]  # the @<key> fields
    count: int = 0  # the n field: what the queue count was raised by at enqueue
    deliveries: int = 1

    @property
    def base(self) -> str:
        return keys.base_of(self.stream)


class MalformedEntry(ArgumentError):
    """An entry the worker cannot read at all (no request in it can be answered)."""


def decode_entry(stream: str, entry_id: str, fields: Mapping[bytes, bytes]) -> Entry:
    """Parse one stream entry; a record that is malformed keeps its error in ``problem``."""
    try:
        t0 = int(fields[b"t0"])
        reply = fields.get(b"reply", b"").decode()
        records = msgpack.unpackb(fields[b"q"], raw=True)
    except KeyError as exc:
        raise MalformedEntry(f"request entry lacks field {exc.args[0].decode()!r}") from None
    except Exception as exc:
        raise MalformedEntry(
            f"request entry is not readable: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(records, list):
        raise MalformedEntry("request entry field 'q' is not an array of records")
    refs = {
        name[1:].decode(errors="replace"): value
        for name, value in fields.items()
        if name[:1] == b"@"
    }
    requests = [_decode_record(entry_id, i, r, t0) for i, r in enumerate(records)]
    count = fields.get(b"n", b"")
    declared = int(count) if count.isdigit() else len(requests)
    return Entry(stream, entry_id, t0, reply, requests, refs, declared)


def _decode_record(entry_id: str, index: int, record: Any, t0: int) -> RunRequest:
    request = _well_formed(record) if type(record) is dict else None
    if request is None:
        request = _checked(entry_id, index, record)
        if request.problem is not None:
            return request
    rid = request.rid
    if rid == "":  # MODELRUN without ID: the request is known by its entry id
        request.rid = entry_id if index == 0 else f"{entry_id}.{index}"
    elif not keys.is_request_id(rid):
        request.rid, request.problem = f"{entry_id}.{index}", ArgumentError(
            f"request id {rid!r} must be 1-64 characters of letters, digits, _ . -"
        )
    request.deadline_ms = t0 + request.timeout_ms
    return request


def _well_formed(record: dict[bytes, Any]) -> RunRequest | None:
    """The common case, read with as few steps as possible; None when anything is
    off (then :func:`_checked` says what)."""
    get = record.get
    rid, model, ver = get(b"id"), get(b"model"), get(b"ver", b"")
    timeout, ttl = get(b"timeout"), get(b"ttl", 0)
    ins, outs = get(b"in", ()), get(b"out", ())
    if not (
        type(rid) is bytes and type(model) is bytes and type(ver) is bytes
        and type(timeout) is int and 0 <= timeout <= MAX_TIMEOUT_MS
        and type(ttl) is int and 0 <= ttl <= MAX_TTL_MS
        and type(ins) is list and type(outs) is list
    ):
        return None
    try:
        inputs = []
        for slot in ins:
            if type(slot) is not list or not 2 <= len(slot) <= 3:
                return None
            name, key = slot[0], slot[1]
            data = slot[2] if len(slot) == 3 else None
            if type(name) is not bytes or type(key) is not bytes or not (
                data is None or type(data) is bytes
            ):
                return None
            inputs.append(InputSlot(name.decode(), key.decode(), data))
        outputs = []
        for slot in outs:
            if type(slot) is not list or len(slot) != 2:
                return None
            name, key = slot
            if type(name) is not bytes or type(key) is not bytes:
                return None
            outputs.append(OutputSlot(name.decode(), key.decode()))
        unit = get(b"unit", b"")
        if type(unit) is not bytes:
            return None
        return RunRequest(
            rid.decode(), model.decode(), ver.decode(), timeout, ttl, bool(get(b"eph")),
            inputs, outputs, unit.decode(),
        )
    except UnicodeDecodeError:
        return None


def _checked(entry_id: str, index: int, record: Any) -> RunRequest:
    """A record read field by field, so a malformed one says what is wrong."""
    fallback = f"{entry_id}.{index}"
    if not isinstance(record, dict):
        return RunRequest(fallback, "", problem=ArgumentError("request record is not a map"))
    try:
        request = RunRequest(
            rid=_text(record.get(b"id"), "id"),
            model=_text(record.get(b"model"), "model"),
            version=_text(record.get(b"ver", b""), "ver"),
            timeout_ms=_int(record.get(b"timeout"), "timeout", MAX_TIMEOUT_MS),
            ttl_ms=_int(record.get(b"ttl", 0), "ttl", MAX_TTL_MS),
            ephemeral=bool(record.get(b"eph", False)),
            inputs=[_input(slot) for slot in _list(record.get(b"in", []), "in")],
            outputs=[_output(slot) for slot in _list(record.get(b"out", []), "out")],
            unit=_text(record.get(b"unit", b""), "unit"),
        )
    except ArgumentError as exc:
        rid = record.get(b"id")
        text = rid.decode(errors="replace") if isinstance(rid, bytes) else ""
        return RunRequest(text if keys.is_request_id(text) else fallback, "", problem=exc)
    return request


def _text(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise ArgumentError(f"request record field {what!r} must be a string")


def _int(value: Any, what: str, most: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most:
        return value
    raise ArgumentError(f"request record field {what!r} must be an integer from 0 to {most}")


def _list(value: Any, what: str) -> list[Any]:
    if isinstance(value, list):
        return value
    raise ArgumentError(f"request record field {what!r} must be an array")


def _input(slot: Any) -> InputSlot:
    if not isinstance(slot, list) or len(slot) not in (2, 3):
        raise ArgumentError("request record inputs are [name, key] or [name, key, data]")
    data = slot[2] if len(slot) == 3 else None
    if data is not None and not isinstance(data, bytes):
        raise ArgumentError("request record input data must be a string")
    return InputSlot(_text(slot[0], "in name"), _text(slot[1], "in key"), data)


def _output(slot: Any) -> OutputSlot:
    if not isinstance(slot, list) or len(slot) != 2:
        raise ArgumentError("request record outputs are [name, key]")
    return OutputSlot(_text(slot[0], "out name"), _text(slot[1], "out key"))
