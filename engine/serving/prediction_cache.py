"""The prediction cache on the worker: an answer already given is given again from Redis.

``lookup`` runs once a batch is prepared (versions resolved, inputs decoded and
checked): each cacheable request is keyed by its version's digest and a hash of
its inputs (client/protocol/caching.py), and one pipelined round trip for the
batch reads the entries (MGET) and, per model, its index's size and oldest
members. A hit is answered without running the model. ``writes`` gives the
commands that keep the answers of misses that ran without error: SET PX ttl,
ZADD to the model's index scored by expiry, and DEL/ZREM of the entries closest
to expiry beyond ``max_entries``. They ride with the batch's completion, after
it, in the write that also carries the next read: no round trip of their own.

The cache only ever saves work: a Redis error in it is logged and the
requests run as if nothing were cached. Pipelines are not cached (their steps
follow ``latest``, so the same digest can answer differently).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis

from inferis.client.protocol import caching, keys
from inferis.client.protocol.caching import CachePolicy, CacheSettings
from inferis.client.protocol.commands import Plain
from inferis.client.protocol.defaults import CACHE_MAX_VALUE_BYTES
from inferis.client.protocol.tensor import decode_tensor

from .. import metrics
from ..models.cache import MOVING_REF_TTL_S
from ..models.pipeline import PIPELINE_BACKEND
from .request import CacheSlot, Request

log = logging.getLogger(__name__)

# An entry's score is its expiry in ms times this, plus a sequence: entries written
# in the same millisecond still leave oldest first (exact in a double until 2255).
SCORE_STEPS = 1000


class PredictionCache:
    def __init__(self, conn: Any) -> None:
        self._redis = conn  # a Redis, or a RedisCluster: every key of a lookup is one slot
        self._settings: dict[str, tuple[CacheSettings, float]] = {}
        self._meta: dict[tuple[str, int, str], CachePolicy | None] = {}
        # index -> (its size, its members beyond the bound) at the last lookup
        self._oldest: dict[str, tuple[int, list[str]]] = {}
        self._counters: dict[tuple[str, int, str], Any] = {}
        self._sequence = 0  # orders entries written in the same millisecond

    def invalidate(self, name: str | None = None) -> None:
        """Forget the settings of ``name`` (or all): a notice says it changed."""
        if name is None:
            self._settings.clear()
        else:
            self._settings.pop(name, None)

    # ---------------------------------------------------------------- lookup

    def lookup(self, requests: Sequence[Request]) -> None:
        """Answer the requests whose answer is cached; key the others to be cached."""
        wanted = [r for r in requests if r.ready and r.info is not None
                  and r.info.backend != PIPELINE_BACKEND]
        if not wanted:
            return
        settings = self._settings_of({r.info.name for r in wanted})  # type: ignore[union-attr]
        slotted = [r for r in wanted if self._slot(r, settings)]
        if not slotted:
            return
        by_index: dict[str, list[Request]] = {}
        for r in slotted:
            by_index.setdefault(r.cache.index, []).append(r)  # type: ignore[union-attr]
        pipe = self._redis.pipeline(transaction=False)
        pipe.execute_command("MGET", *[r.cache.key for r in slotted])  # type: ignore[union-attr]
        for index, group in by_index.items():
            keep = max(0, min(r.cache.max_entries for r in group) - len(group))  # type: ignore[union-attr]
            pipe.zcard(index)
            pipe.zrange(index, 0, -(keep + 1))  # what goes if every one of them misses
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            log.warning("prediction cache lookup failed (%s); running the requests", exc)
            replies = [exc] * (1 + 2 * len(by_index))
        values = replies[0] if isinstance(replies[0], list) else [None] * len(slotted)
        for index, (size, oldest) in zip(by_index, _pairs(replies[1:]), strict=True):
            if isinstance(size, int) and isinstance(oldest, list):
                self._oldest[index] = (size, [_text(m) for m in oldest])
        for request, value in zip(slotted, values, strict=True):
            self._answer(request, value)

    def _slot(self, request: Request, settings: dict[str, CacheSettings]) -> bool:
        info = request.info
        assert info is not None
        ident = (info.name, info.version, info.digest)
        if ident not in self._meta:
            self._meta[ident] = caching.policy_of_meta(info.extra)
        alias = request.route.alias if request.route is not None else None
        policy = settings[info.name].effective(alias, self._meta[ident])
        if policy is None or not policy.enabled:
            return False
        base = request.entry.base
        member = f"{info.digest}:{caching.inputs_hash(request.feed, request.output_names)}"
        request.cache = CacheSlot(
            keys.prediction_key(base, info.name, member), keys.prediction_index(base, info.name),
            member, policy.ttl_ms, policy.max_entries,
        )
        return True

    def _answer(self, request: Request, value: Any) -> None:
        info, slot = request.info, request.cache
        assert info is not None and slot is not None
        outputs = caching.unpack_answer(value, request.output_names) if value else None
        if outputs is not None:
            try:
                request.results = {name: decode_tensor(blob) for name, blob in outputs}
            except Exception:  # a damaged entry is a miss; the run writes it again
                request.results, outputs = {}, None
        hit = outputs is not None
        if hit:
            request.encoded, slot.hit = outputs, True
            request.run_us, request.batch_size = 0, 1
        self._counter(info.name, info.version, "hit" if hit else "miss").inc()

    def _counter(self, model: str, version: int, result: str) -> Any:
        """The labelled child (``labels()`` is slow per request)."""
        key = (model, version, result)
        child = self._counters.get(key)
        if child is None:
            if len(self._counters) >= 10_000:  # bound label cardinality
                self._counters.clear()
            child = self._counters[key] = metrics.CACHE_LOOKUPS.labels(model, str(version), result)
        return child

    def _settings_of(self, names: set[str]) -> dict[str, CacheSettings]:
        """Each model's settings hash, read again (one round trip for all) when older
        than the moving references' TTL or named by a notice."""
        now = time.monotonic()
        stale = sorted(n for n in names if self._settings.get(n, (None, 0.0))[1] <= now)
        if stale:
            pipe = self._redis.pipeline(transaction=False)
            for name in stale:
                pipe.hgetall(keys.cache_settings(name))
            try:
                replies = pipe.execute(raise_on_error=False)
            except redis.RedisError as exc:
                log.warning("cannot read prediction cache settings (%s)", exc)
                replies = [exc] * len(stale)
            for name, reply in zip(stale, replies, strict=True):
                fields = {_text(k): _text(v) for k, v in reply.items()} \
                    if isinstance(reply, dict) else {}  # unreadable: no settings, for now
                self._settings[name] = (CacheSettings.parse(fields), now + MOVING_REF_TTL_S)
        return {n: self._settings[n][0] for n in names}

    # ---------------------------------------------------------------- writes

    def writes(self, requests: Sequence[Request], now_ms: int) -> list[Plain]:
        """The commands that cache the answers of misses that ran without error, and
        evict beyond each model's bound: sent after the batch's completion, in the
        same write (lanes.py), so no answer waits for them."""
        by_index: dict[str, dict[str, tuple[CacheSlot, bytes]]] = {}
        models: dict[str, str] = {}
        for r in requests:
            slot = r.cache
            if slot is None or slot.hit or r.error is not None or r.encoded is None:
                continue
            value = caching.pack_answer(r.encoded)
            if len(value) <= CACHE_MAX_VALUE_BYTES:  # the same inputs twice are one entry
                by_index.setdefault(slot.index, {})[slot.member] = (slot, value)
                models[slot.index] = r.info.name  # type: ignore[union-attr]
        out: list[Plain] = []
        for index, entries in by_index.items():
            bound = min(slot.max_entries for slot, _ in entries.values())
            kept = list(entries.values())[-bound:]
            size, oldest = self._oldest.pop(index, (0, []))
            excess = max(0, size + len(kept) - bound)
            gone = [m for m in oldest if m not in entries][:excess]
            if gone:
                out.append(Plain(("DEL", *[keys.prediction_key_in(index, m) for m in gone])))
                out.append(Plain(("ZREM", index, *gone)))
                metrics.CACHE_EVICTIONS.labels(models[index]).inc(len(gone))
            for slot, value in kept:
                out.append(Plain(("SET", slot.key, value, "PX", slot.ttl_ms)))
            scored: list[Any] = []
            for slot, _ in kept:
                self._sequence = (self._sequence + 1) % SCORE_STEPS
                scored += [(now_ms + slot.ttl_ms) * SCORE_STEPS + self._sequence, slot.member]
            out.append(Plain(("ZADD", index, *scored)))
            # The index goes when its last entry has (NX: a new index; GT: a longer TTL).
            longest = max(slot.ttl_ms for slot, _ in kept)
            out.append(Plain(("PEXPIRE", index, longest, "NX")))
            out.append(Plain(("PEXPIRE", index, longest, "GT")))
        return out


def _pairs(items: Sequence[Any]) -> list[tuple[Any, Any]]:
    it = iter(items)
    return list(zip(it, it, strict=True))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
