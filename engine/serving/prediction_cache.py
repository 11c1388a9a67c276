"""The prediction cache on the worker: an answer already given is given again from Redis.

``lookup`` runs once a batch is prepared (versions resolved, inputs decoded and
checked): each cacheable request is keyed by its version's digest and a hash of
its inputs (client/protocol/caching.py), and one pipelined round trip for the
batch reads the entries (MGET) and, per model, its index's size and oldest
members. A hit is answered without running the model. ``note`` keeps the misses
that ran without error; ``flush``, called once the batch's completions are out
(so no answer waits for it), writes them in one more pipelined round trip: SET
PX ttl, ZADD to the model's index scored by expiry, and DEL/ZREM of the entries
closest to expiry beyond ``max_entries``.

The cache only ever saves work: a Redis error in it is logged and the
requests run as if nothing were cached. Pipelines are not cached (their steps
follow ``latest``, so the same digest can answer differently).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from inferis.client.protocol import caching, keys
from inferis.client.protocol.caching import CachePolicy, CacheSettings
from inferis.client.protocol.defaults import CACHE_MAX_VALUE_BYTES
from inferis.client.protocol.tensor import decode_tensor

from .. import metrics
from ..models.cache import MOVING_REF_TTL_S
from ..models.pipeline import PIPELINE_BACKEND
from .request import CacheSlot, Request

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Write:
    slot: CacheSlot
    model: str
    value: bytes


class PredictionCache:
    def __init__(self, conn: Any) -> None:
        self._redis = conn  # a Redis, or a RedisCluster: every key of a lookup is one slot
        self._settings: dict[str, tuple[CacheSettings, float]] = {}
        self._meta: dict[tuple[str, int, str], CachePolicy | None] = {}
        # index -> (its size, its members beyond the bound) at the last lookup
        self._oldest: dict[str, tuple[int, list[str]]] = {}
        self._pending: list[_Write] = []
        self._counters: dict[tuple[str, int, str], Any] = {}

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

    def note(self, requests: Sequence[Request]) -> None:
        """Keep the answers of cacheable misses that ran without error."""
        for r in requests:
            slot = r.cache
            if slot is None or slot.hit or r.error is not None or r.encoded is None:
                continue
            value = caching.pack_answer(r.encoded)
            if len(value) <= CACHE_MAX_VALUE_BYTES:
                assert r.info is not None
                self._pending.append(_Write(slot, r.info.name, value))

    def flush(self, now_ms: int) -> None:
        """Write what ``note`` kept, evicting beyond each model's bound: one round trip."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        by_index: dict[str, dict[str, _Write]] = {}
        for w in pending:  # the same inputs twice in a batch are one entry
            by_index.setdefault(w.slot.index, {})[w.slot.member] = w
        pipe = self._redis.pipeline(transaction=False)
        evicted: dict[str, int] = {}
        for index, writes in by_index.items():
            bound = min(w.slot.max_entries for w in writes.values())
            kept = list(writes.values())[-bound:]
            size, oldest = self._oldest.pop(index, (0, []))
            excess = max(0, size + len(kept) - bound)
            gone = [m for m in oldest if m not in writes][:excess]
            if gone:
                pipe.delete(*[f"{index}:{m}" for m in gone])
                pipe.zrem(index, *gone)
                model = kept[0].model
                evicted[model] = evicted.get(model, 0) + len(gone)
            for w in kept:
                pipe.set(w.slot.key, w.value, px=w.slot.ttl_ms)
            pipe.zadd(index, {w.slot.member: now_ms + w.slot.ttl_ms for w in kept})
            # The index outlives its entries by nothing: it goes when the last one has.
            longest = max(w.slot.ttl_ms for w in kept)
            pipe.pexpire(index, longest, nx=True)
            pipe.pexpire(index, longest, gt=True)
        try:
            for reply in pipe.execute(raise_on_error=False):
                if isinstance(reply, Exception):
                    raise reply
        except redis.RedisError as exc:
            log.warning("could not write %d answer(s) to the prediction cache: %s",
                        len(pending), exc)
            return
        for model, count in evicted.items():
            metrics.CACHE_EVICTIONS.labels(model).inc(count)


def _pairs(items: Sequence[Any]) -> list[tuple[Any, Any]]:
    it = iter(items)
    return list(zip(it, it, strict=True))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
