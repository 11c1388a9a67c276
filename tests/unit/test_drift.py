"""Drift statistics (client/drift.py): histograms with fixed edges, PSI and
Jensen-Shannon against known cases."""

from __future__ import annotations

import numpy as np
import pytest

from inferis.client import drift as D


def test_histogram_has_overflow_bins_and_counts_everything() -> None:
    values = np.array([-5.0, 0.0, 0.5, 0.99, 1.0, 7.0])
    counts = D.histogram(values, 0.0, 1.0)
    assert len(counts) == D.BINS + 2 and counts.sum() == len(values)
    assert counts[0] == 1 and counts[-1] == 2  # below lo; at or above hi
    assert counts[1] == 1  # 0.0 opens the first inner bin


def test_edges_cover_the_first_values_with_room() -> None:
    lo, hi = D.edges_for(np.array([2.0, 4.0]))
    assert lo < 2.0 and hi > 4.0 and lo == pytest.approx(1.8) and hi == pytest.approx(4.2)
    lo, hi = D.edges_for(np.array([3.0, 3.0]))  # a constant column still gets a range
    assert lo < 3.0 < hi


def test_same_distribution_is_stable_and_a_shift_is_drift() -> None:
    rng = np.random.default_rng(1)
    ref = D.histogram(rng.normal(0, 1, 20_000), -4, 4)
    same = D.histogram(rng.normal(0, 1, 20_000), -4, 4)
    shifted = D.histogram(rng.normal(1, 1, 20_000), -4, 4)
    assert D.psi(ref, same) < 0.01 and D.jensen_shannon(ref, same) < 0.005
    assert D.psi(ref, shifted) > D.PSI_DRIFT and D.jensen_shannon(ref, shifted) > 0.05
    # known value: two bins, 50/50 against 80/20
    assert D.psi([50, 50], [80, 20]) == pytest.approx(0.3 * np.log(1.6) + -0.3 * np.log(0.4))
    # disjoint: 1 bit, less the share (1e-4) empty bins are given to keep logs finite
    assert D.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0, abs=2e-3)


def test_compare_sorts_most_drifted_first_with_verdicts() -> None:
    rng = np.random.default_rng(2)
    ref = {"in:X:0": list(D.histogram(rng.normal(0, 1, 5000), -4, 4)),
           "in:X:1": list(D.histogram(rng.normal(0, 1, 5000), -4, 4))}
    cur = {"in:X:0": list(D.histogram(rng.normal(0, 1, 5000), -4, 4)),
           "in:X:1": list(D.histogram(rng.normal(2, 1, 5000), -4, 4))}
    report = D.compare(ref, cur)
    assert [c.column for c in report] == ["in:X:1", "in:X:0"]
    assert report[0].verdict == "drift" and report[1].verdict == "stable"
    assert D.compare({}, {"out:y:0": [1] * (D.BINS + 2)})[0].verdict == "no data"


def test_parse_reply_rebuilds_counts_per_column() -> None:
    raw = [[b"in:X:0", b"0,1"], b"10", b"12", [b"in:X:0:3", b"5", b"in:X:0:17", b"2"],
           [b"in:X:0:3", b"1"], [b"10", b"11", b"12"]]
    report = D.parse_reply(raw)
    assert (report.reference_window, report.current_window, report.windows) == (10, 12,
                                                                                 [10, 11, 12])
    assert report.reference["in:X:0"][3] == 5 and report.reference["in:X:0"][17] == 2
    assert sum(report.current["in:X:0"]) == 1
