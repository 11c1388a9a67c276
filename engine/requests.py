"""Parse request-stream entries written by MODELRUN (see docs/PROTOCOL.md)."""

from __future__ import annotations

from dataclasses import dataclass

from inferis.client import keys
from inferis.client.errors import ArgumentError

REPLY_STREAM = "stream"
REPLY_LIST = "list"


@dataclass(frozen=True)
class InputRef:
    name: str  # "" binds by position
    key: str
    inline: bytes | None  # the value copied into the entry, when small


@dataclass(frozen=True)
class OutputRef:
    name: str
    key: str


@dataclass
class RunRequest:
    stream: str
    entry_id: str
    rid: str
    model: str
    version: str
    deadline_ms: int
    ttl_ms: int
    enqueued_ms: int
    reply_key: str
    reply_mode: str
    inputs: list[InputRef]
    outputs: list[OutputRef]
    # Small tensors live only in the entry and the reply, never as keys.
    ephemeral: bool = False

    @property
    def output_prefix(self) -> str:
        """Where auto-named outputs go: next to the request's inputs."""
        return f"{keys.base_of(self.stream)}:r:{self.rid}:out:"


def _s(fields: dict[bytes, bytes], name: str, default: str | None = None) -> str:
    value = fields.get(name.encode())
    if value is None:
        if default is None:
            raise ArgumentError(f"request entry lacks field {name!r}")
        return default
    return value.decode("utf-8", errors="replace")


def _i(fields: dict[bytes, bytes], name: str, default: str | None = None) -> int:
    text = _s(fields, name, default)
    try:
        return int(text)
    except ValueError:
        raise ArgumentError(f"request entry field {name!r} is not an integer: {text!r}") from None


def reply_target(stream: str, entry_id: str, fields: dict[bytes, bytes]) -> tuple[str, str, str]:
    """(rid, reply key, reply mode), derivable even from an entry that fails to parse."""
    rid = _s(fields, "rid", entry_id)
    reply = _s(fields, "reply", "")
    if reply:
        return rid, reply, REPLY_STREAM
    return rid, f"{keys.base_of(stream)}:r:{rid}:done", REPLY_LIST


def parse_entry(stream: str, entry_id: str, fields: dict[bytes, bytes]) -> RunRequest:
    rid, reply_key, reply_mode = reply_target(stream, entry_id, fields)
    n_in = _i(fields, "ni")
    n_out = _i(fields, "no", "0")
    inputs = [
        InputRef(_s(fields, f"in{j}", ""), _s(fields, f"ik{j}"), fields.get(f"id{j}".encode()))
        for j in range(1, n_in + 1)
    ]
    outputs = [
        OutputRef(_s(fields, f"on{j}", ""), _s(fields, f"ok{j}")) for j in range(1, n_out + 1)
    ]
    return RunRequest(
        stream=stream,
        entry_id=entry_id,
        rid=rid,
        model=_s(fields, "model"),
        version=_s(fields, "ver", ""),
        deadline_ms=_i(fields, "dl"),
        ttl_ms=_i(fields, "ttl", "0"),
        enqueued_ms=_i(fields, "t0", "0"),
        reply_key=reply_key,
        reply_mode=reply_mode,
        inputs=inputs,
        outputs=outputs,
        ephemeral=fields.get(b"eph") == b"1",
    )
