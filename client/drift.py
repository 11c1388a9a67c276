"""Drift: how far a window of traffic has moved from a reference window, per input
and output column, from the histograms workers keep in Redis (``MODELDRIFT``,
docs/PROTOCOL.md §15.5). Pure functions, no I/O.

A column's histogram has ``BINS`` equal bins between edges fixed the first time
the version was seen, plus one bin below and one above, so windows of every
worker and every region add up bin by bin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BINS = 16  # inner bins; with the two overflow bins a histogram has BINS + 2 counts
# Usual reading of the population stability index.
PSI_WATCH, PSI_DRIFT = 0.1, 0.2
_EPS = 1e-4  # share given to an empty bin, so that a log of it stays finite


def edges_for(values: np.ndarray) -> tuple[float, float]:
    """Edges for a column from its first values: their range, widened by 10%."""
    lo, hi = float(np.min(values)), float(np.max(values))
    pad = (hi - lo) * 0.1 or max(abs(lo) * 0.1, 1e-6)
    return lo - pad, hi + pad


def histogram(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Counts of ``values`` in [-inf, lo), BINS bins of [lo, hi), [hi, inf)."""
    inner = np.linspace(lo, hi, BINS + 1)
    index = np.searchsorted(inner, values, side="right")  # 0: below lo; BINS+1: at or above hi
    return np.bincount(np.clip(index, 0, BINS + 1), minlength=BINS + 2)


def _shares(counts: Sequence[int]) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total == 0:
        return np.full(len(c), 1.0 / len(c))
    p = np.maximum(c / total, _EPS)
    return p / p.sum()


def psi(reference: Sequence[int], current: Sequence[int]) -> float:
    """Population stability index: sum of (cur - ref) * ln(cur / ref) over bins."""
    r, c = _shares(reference), _shares(current)
    return float(np.sum((c - r) * np.log(c / r)))


def jensen_shannon(reference: Sequence[int], current: Sequence[int]) -> float:
    """Jensen-Shannon divergence in bits (0: the same, 1: disjoint)."""
    r, c = _shares(reference), _shares(current)
    m = (r + c) / 2
    return float((np.sum(r * np.log2(r / m)) + np.sum(c * np.log2(c / m))) / 2)


@dataclass(frozen=True)
class ColumnDrift:
    column: str  # "in:X:2" (input X, column 2) or "out:probabilities:0"
    reference_n: int
    current_n: int
    psi: float
    js: float

    @property
    def verdict(self) -> str:
        if self.reference_n == 0 or self.current_n == 0:
            return "no data"
        if self.psi >= PSI_DRIFT:
            return "drift"
        return "watch" if self.psi >= PSI_WATCH else "stable"


def compare(reference: Mapping[str, Sequence[int]], current: Mapping[str, Sequence[int]]
            ) -> list[ColumnDrift]:
    """Every column of either window, most drifted first."""
    out = []
    empty = [0] * (BINS + 2)
    for column in sorted(set(reference) | set(current)):
        ref, cur = reference.get(column, empty), current.get(column, empty)
        out.append(ColumnDrift(column, int(sum(ref)), int(sum(cur)), psi(ref, cur),
                               jensen_shannon(ref, cur)))
    return sorted(out, key=lambda d: (-d.psi if math.isfinite(d.psi) else 0, d.column))


@dataclass(frozen=True)
class DriftReport:
    """A version's reference and current windows (ids in units of the workers'
    window length since the epoch; -1: none yet), their counts per column, the
    windows kept, and the comparison."""

    reference_window: int
    current_window: int
    windows: list[int]
    reference: dict[str, list[int]] = field(repr=False)
    current: dict[str, list[int]] = field(repr=False)

    @property
    def columns(self) -> list[ColumnDrift]:
        return compare(self.reference, self.current)


def parse_reply(raw: Any) -> DriftReport:
    """``MODELDRIFT``'s reply."""
    _, ref, cur, ref_counts, cur_counts, windows = raw
    return DriftReport(int(_text(ref) or -1), int(_text(cur) or -1),
                       [int(w) for w in windows or ()], _by_column(ref_counts),
                       _by_column(cur_counts))


def _by_column(flat: Any) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    it = iter(flat or ())
    for key, count in zip(it, it, strict=True):
        column, _, bin_index = _text(key).rpartition(":")
        out.setdefault(column, [0] * (BINS + 2))[int(bin_index)] = int(count)
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
