"""The prediction cache: who turns it on, how an answer is keyed, how it is stored. No I/O.

Caching is a setting at three levels, the most specific first:

1. an alias, in the model's settings hash ``inferis:{<name>}:cache``: fields
   ``alias:<alias>:ttl_ms`` and ``alias:<alias>:max_entries`` (requests that name
   that alias);
2. the model, in the same hash: fields ``ttl_ms`` and ``max_entries``;
3. the version, at store time: ``META {"cache": {"ttl_ms": N, "max_entries": M}}``.

The first level that names a ``ttl_ms`` decides (0 turns caching off there).
An answer is kept under ``<tag>:cache:<name>:<digest>:<inputs hash>`` (keys.py), in
the request's partition, so a version only ever finds its own answers; the
inputs hash covers every input (name, dtype, shape, bytes) in name order and the
outputs asked for. docs/PROTOCOL.md §18 has the whole protocol.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from .defaults import CACHE_MAX_ENTRIES, MAX_CACHE_ENTRIES, MAX_TTL_MS
from .errors import ArgumentError
from .tensor import tensor_parts

META_FIELD = "cache"  # the version's META key
TTL_FIELD = "ttl_ms"
ENTRIES_FIELD = "max_entries"
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How long answers live and how many a model keeps per partition."""

    ttl_ms: int
    max_entries: int = CACHE_MAX_ENTRIES

    @property
    def enabled(self) -> bool:
        return self.ttl_ms > 0

    def as_meta(self) -> dict[str, int]:
        return {TTL_FIELD: self.ttl_ms, ENTRIES_FIELD: self.max_entries}


def check_policy(ttl_ms: Any, max_entries: Any) -> CachePolicy:
    """A policy from what a caller gave, or ValueError saying what is wrong."""
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or not 0 <= ttl_ms <= MAX_TTL_MS:
        raise ValueError(f"cache ttl_ms must be an integer from 0 to {MAX_TTL_MS}, got {ttl_ms!r}")
    entries = CACHE_MAX_ENTRIES if max_entries is None else max_entries
    if isinstance(entries, bool) or not isinstance(entries, int) or not (
        1 <= entries <= MAX_CACHE_ENTRIES
    ):
        raise ValueError(f"cache max_entries must be an integer from 1 to {MAX_CACHE_ENTRIES}, "
                         f"got {max_entries!r}")
    return CachePolicy(ttl_ms, entries)


def _policy(ttl: Any, entries: Any) -> CachePolicy | None:
    """A stored policy; one that does not parse is no setting (never an error)."""
    try:
        return check_policy(int(ttl), None if entries in (None, "") else int(entries))
    except (TypeError, ValueError):
        return None


def policy_of_meta(extra: Mapping[str, Any]) -> CachePolicy | None:
    """The version's own setting (its META ``cache`` object), if any."""
    doc = extra.get(META_FIELD)
    if not isinstance(doc, Mapping) or TTL_FIELD not in doc:
        return None
    return _policy(doc.get(TTL_FIELD), doc.get(ENTRIES_FIELD))


def meta_with_policy(
    extra: Mapping[str, Any] | None, ttl_ms: int | None, max_entries: int | None
) -> dict[str, Any]:
    """``extra`` (the META object) with the version's cache setting in it."""
    if ttl_ms is None:
        raise ArgumentError("cache_max_entries needs cache_ttl_ms (how long answers live)")
    try:
        policy = check_policy(ttl_ms, max_entries)
    except ValueError as exc:
        raise ArgumentError(str(exc)) from None
    if extra is not None and not isinstance(extra, Mapping):
        raise ArgumentError(f"extra must be a mapping, got {type(extra).__name__}")
    return {**(extra or {}), META_FIELD: policy.as_meta()}


def alias_field(alias: str, name: str) -> str:
    return f"alias:{alias}:{name}"


def settings_fields(policy: CachePolicy, alias: str | None = None) -> list[Any]:
    """HSET field/value pairs of the settings hash for one level."""
    def f(name: str) -> str:
        return alias_field(alias, name) if alias else name

    return [f(TTL_FIELD), policy.ttl_ms, f(ENTRIES_FIELD), policy.max_entries]


def unset_fields(alias: str | None = None) -> list[str]:
    names = [TTL_FIELD, ENTRIES_FIELD]
    return [alias_field(alias, n) for n in names] if alias else names


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The settings hash of one model, parsed."""

    model: CachePolicy | None = None
    aliases: dict[str, CachePolicy] = field(default_factory=dict)

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> CacheSettings:
        aliases: dict[str, CachePolicy] = {}
        for name, value in fields.items():
            if name.startswith("alias:") and name.endswith(":" + TTL_FIELD):
                alias = name[len("alias:"): -len(TTL_FIELD) - 1]
                policy = _policy(value, fields.get(alias_field(alias, ENTRIES_FIELD)))
                if policy is not None:
                    aliases[alias] = policy
        model = _policy(fields[TTL_FIELD], fields.get(ENTRIES_FIELD)) \
            if TTL_FIELD in fields else None
        return cls(model, aliases)

    def effective(self, alias: str | None, version: CachePolicy | None) -> CachePolicy | None:
        """The policy of a request through ``alias`` (or none) to a version whose own
        setting is ``version``: the most specific level that has one."""
        if alias and alias in self.aliases:
            return self.aliases[alias]
        return self.model if self.model is not None else version


def inputs_hash(feed: Mapping[str, np.ndarray], outputs: Sequence[str]) -> str:
    """BLAKE2b (128 bits, hex) of the inputs in name order, each its name then its
    encoded header (dtype, shape) and data, then the outputs asked for: two
    requests share an answer exactly when the model sees the same tensors."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(feed):
        encoded = name.encode()
        h.update(_LENGTH.pack(len(encoded)))
        h.update(encoded)
        header, data = tensor_parts(feed[name])
        h.update(header)
        h.update(data)
    h.update(b"\xff")  # inputs end here
    for name in outputs:
        encoded = name.encode()
        h.update(_LENGTH.pack(len(encoded)))
        h.update(encoded)
    return h.hexdigest()


def pack_answer(outputs: Sequence[tuple[str, bytes]]) -> bytes:
    """A cached entry's value: msgpack ``[[output name, encoded tensor], ...]``."""
    return msgpack.packb([[name, blob] for name, blob in outputs], use_bin_type=True)


def unpack_answer(value: bytes, names: Sequence[str]) -> list[tuple[str, bytes]] | None:
    """The outputs of a cached entry, or None when it is not exactly ``names``' (a
    foreign or damaged value is a miss, never an answer)."""
    try:
        items = msgpack.unpackb(value, raw=False)
    except Exception:
        return None
    if not isinstance(items, list) or len(items) != len(names):
        return None
    out = []
    for item, want in zip(items, names, strict=True):
        if not (isinstance(item, list) and len(item) == 2 and item[0] == want
                and isinstance(item[1], bytes)):
            return None
        out.append((want, item[1]))
    return out
