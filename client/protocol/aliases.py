"""Aliases: names that route to a version, or split traffic over versions by weight.

The record lives in ``inferis:{<name>}:alias:<alias>`` (lua/inferis.lua,
``MODELALIAS``); this module reads it and chooses an arm, the same way in the
worker, the SDK and the tests. No I/O.

An arm is chosen from a bucket in ``[0, WEIGHT_TOTAL)``: the CRC32 of
``<alias>:<unit>`` when the caller names a unit (a user id: sticky, the same on
every worker and after restarts), else a random one. The *last* arm owns the
top of the bucket space, the one before it the range below, and the *first*
arm (the control) the bottom. So with a control and a canary, raising the
canary's weight moves units only from the control to the canary.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .replies import text_map

WEIGHT_TOTAL = 10_000  # weights are parts of 10,000 (0.01 %)
PPM = 1_000_000


def is_alias_ref(version: str) -> bool:
    """A requested version that names an alias (not a number, a digest, latest or empty)."""
    return (bool(version) and not version.isdigit() and version.lower() != "latest"
            and not is_digest(version))


def is_digest(version: str) -> bool:
    """A SHA-256 in hex: the version with that content."""
    return len(version) == 64 and all(c in "0123456789abcdefABCDEF" for c in version)


def bucket(alias: str, unit: str) -> int:
    return zlib.crc32(f"{alias}:{unit}".encode()) % WEIGHT_TOTAL


def format_arms(arms: Mapping[int, float] | list[tuple[int, float]]) -> str:
    """``{3: 0.9, 4: 0.1}`` (shares, or weights of 10,000) as ``3=9000,4=1000``.
    Shares are rounded to parts of 10,000; the first arm absorbs the rounding."""
    items = list(arms.items()) if isinstance(arms, Mapping) else list(arms)
    if not items:
        raise ValueError("an alias needs at least one version")
    if any(not isinstance(w, int | float) or isinstance(w, bool) or not 0 <= w < float("inf")
           for _, w in items):
        raise ValueError("shares must be finite numbers of at least 0")
    total = sum(w for _, w in items)
    if total <= 0:
        raise ValueError("at least one version needs a share above 0")
    scale = WEIGHT_TOTAL / total
    weights = [round(w * scale) for _, w in items]
    weights[0] += WEIGHT_TOTAL - sum(weights)
    return ",".join(f"{int(v)}={w}" for (v, _), w in zip(items, weights, strict=True))


def parse_arms(text: str) -> list[tuple[int, int]]:
    arms = []
    for part in text.split(","):
        if not part:
            continue
        version, _, weight = part.partition("=")
        arms.append((int(version), int(weight) if weight else WEIGHT_TOTAL))
    return arms


@dataclass(frozen=True, slots=True)
class AliasRoute:
    """An alias as it serves now, plus what it waits to become."""

    alias: str
    arms: tuple[tuple[int, int], ...]  # (version, weight of 10,000), control first
    pending: tuple[tuple[int, int], ...] = ()  # the next arms, once warm everywhere
    shadow: int = 0  # a version mirrored a share of the traffic (0: none)
    shadow_ppm: int = 0
    log_ttl_ms: int = 24 * 3600 * 1000  # how long predictions wait for feedback
    state: str = ""
    epoch: int = 0

    @classmethod
    def parse(cls, alias: str, fields: Mapping[str, str]) -> AliasRoute:
        return cls(
            alias=alias,
            arms=tuple(parse_arms(fields.get("spec", ""))),
            pending=tuple(parse_arms(fields.get("pending", ""))),
            shadow=int(fields.get("shadow") or 0),
            shadow_ppm=int(fields.get("shadow_ppm") or 0),
            log_ttl_ms=int(fields.get("log_ttl_ms") or 24 * 3600 * 1000),
            state=fields.get("state", ""),
            epoch=int(fields.get("epoch") or 0),
        )

    def pick(self, unit: str = "", rng: random.Random | None = None) -> int:
        """The version that serves this unit (or a random request)."""
        if not self.arms:
            raise LookupError(f"alias {self.alias} has no active versions yet")
        b = bucket(self.alias, unit) if unit else (rng or random).randrange(WEIGHT_TOTAL)
        top = WEIGHT_TOTAL
        for version, weight in reversed(self.arms):
            if b >= top - weight:
                return version
            top -= weight
        return self.arms[0][0]

    def mirrors(self, unit: str = "", rng: random.Random | None = None) -> bool:
        """Whether this request is also sent to the shadow version."""
        if not self.shadow or not self.shadow_ppm:
            return False
        if unit:  # sticky too, independent of the arm's bucket
            return zlib.crc32(f"shadow:{self.alias}:{unit}".encode()) % PPM < self.shadow_ppm
        return (rng or random).randrange(PPM) < self.shadow_ppm

    def versions(self) -> set[int]:
        """Every version the alias serves, will serve, or mirrors to."""
        found = {v for v, w in (*self.arms, *self.pending) if w > 0}
        if self.shadow:
            found.add(self.shadow)
        return found


def parse_routes(flat: Any) -> dict[str, AliasRoute]:
    """``MODELALIASGET <name>``'s reply (alias, fields, ...) as routes by alias."""
    it = iter(flat or ())
    routes = {}
    for raw, fields in zip(it, it, strict=True):
        alias = raw.decode() if isinstance(raw, bytes) else str(raw)
        routes[alias] = AliasRoute.parse(alias, text_map(fields))
    return routes
