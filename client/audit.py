"""The audit of a model: who stored, deleted, re-pointed, exported or loaded it.

Redis keeps one stream per model, ``inferis:{<name>}:audit``, bounded with
``MAXLEN ~`` (docs/PROTOCOL.md §17). A Function cannot learn who calls it (ACL
WHOAMI is not allowed in scripts), so each entry's ``by`` is what the caller
states. The SDK states ``<ACL user>`` (asked once with ACL WHOAMI) or
``<ACL user>/<caller id>``, the caller id being the call's ``by=`` or the
client's ``caller=``. Nothing stops a client that bypasses the SDK from stating
something else: ``by`` is as trustworthy as the ACL rights of whoever may write
the model's keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .protocol.defaults import MAX_BY_BYTES, UNKNOWN_USER
from .protocol.errors import ArgumentError
from .protocol.replies import text_map

WHOAMI = ("ACL", "WHOAMI")


def stated_by(user: str | None, caller_id: str) -> str:
    """``user`` or ``user/caller_id``; an unknown user is ``?``."""
    if not isinstance(caller_id, str):
        raise ArgumentError(f"by must be a str, got {caller_id!r}")
    who = user or UNKNOWN_USER
    text = f"{who}/{caller_id}" if caller_id else who
    if len(text.encode()) > MAX_BY_BYTES:
        raise ArgumentError(f"by must make at most {MAX_BY_BYTES} bytes with the ACL user, "
                            f"got {len(text.encode())}")
    return text


def parse_entries(reply: Sequence[Any] | None) -> list[dict[str, str]]:
    """XREVRANGE entries as dicts: every field, plus ``id`` and ``ms`` (its time)."""
    out = []
    for entry_id, fields in reply or ():
        record = text_map(fields)
        record["id"] = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        record["ms"] = record["id"].split("-")[0]
        out.append(record)
    return out


def describe(entry: dict[str, str]) -> str:
    """One line of ``inferis model audit``, after the time."""
    event, by = entry.get("event", "?"), entry.get("by") or "-"
    if "alias" in entry:
        return (f"{event:9} alias {entry['alias']:12} {entry.get('from') or '-':>14} -> "
                f"{entry.get('to') or '-':14} epoch {entry.get('epoch', '0'):>3} by {by} "
                f"{entry.get('why', '')}").rstrip()
    details = [f"digest {entry.get('digest', '')[:16]}"]
    if entry.get("signer"):
        details.append(f"signer {entry['signer']}")
    if entry.get("encrypted"):
        details.append(f"key {entry['encrypted']}")
    return f"{event:9} v{entry.get('version', '?'):<17} {' '.join(details)} by {by}"
