"""Quality summaries, ranking and the sequential A/B test, without Redis."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inferis.client.quality import (
    NO_DECISION,
    TREATMENT_BETTER,
    TREATMENT_WORSE,
    VersionQuality,
    msprt,
    rank,
    summarize,
    thompson_weights,
    wilson_interval,
)

Z = 1.96


# --- summaries ---------------------------------------------------------------


def test_wilson_81_of_100() -> None:
    q = summarize(3, {"n": 100, "correct": 81}, "classification")
    assert (q.version, q.kind, q.n, q.metric) == (3, "classification", 100, "accuracy")
    assert q.value == pytest.approx(0.81)
    # Reference values of the Wilson score interval, z = 1.96.
    assert q.low == pytest.approx(0.72221, abs=1e-5)
    assert q.high == pytest.approx(0.87485, abs=1e-5)
    # Each bound is a root of (p - x)^2 = z^2 x (1 - x) / n, the interval's definition.
    for x in (q.low, q.high):
        assert (0.81 - x) ** 2 == pytest.approx(Z * Z * x * (1 - x) / 100, rel=1e-9)
    assert q.rmse is None and q.log_loss is None


def test_wilson_at_the_edges() -> None:
    # Closed forms at 0 and n successes: z^2 / (n + z^2) from the boundary.
    edge = Z * Z / (10 + Z * Z)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(edge, rel=1e-12)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(1 - edge, rel=1e-12) and high == 1.0


def test_classification_log_loss() -> None:
    probs = np.array([0.9, 0.6, 0.99, 0.3])
    counters = {"n": 6, "correct": 5, "logloss_n": len(probs),
                "logloss_e6": int(sum(round(-math.log(p) * 1e6) for p in probs))}
    q = summarize(1, counters, "classification")
    assert q.log_loss == pytest.approx(float(np.mean(-np.log(probs))), abs=1e-6)
    assert summarize(1, {"n": 6, "correct": 5}, "classification").log_loss is None


def test_regression_from_known_errors() -> None:
    rng = np.random.default_rng(7)
    errors = rng.normal(0.3, 2.0, size=500)  # pred - truth
    counters = {
        "n": errors.size,
        "abs_err_e6": int(sum(round(abs(e) * 1e6) for e in errors)),
        "sq_err_e6": int(sum(round(e * e * 1e6) for e in errors)),
    }
    q = summarize(9, counters, "regression")
    mae = float(np.mean(np.abs(errors)))
    assert (q.kind, q.metric, q.n) == ("regression", "mae", 500)
    assert q.value == pytest.approx(mae, abs=1e-6)
    assert q.rmse == pytest.approx(float(np.sqrt(np.mean(errors**2))), abs=1e-6)
    half = Z * float(np.std(np.abs(errors))) / math.sqrt(errors.size)
    assert q.low == pytest.approx(mae - half, abs=1e-6)
    assert q.high == pytest.approx(mae + half, abs=1e-6)
    assert q.log_loss is None


def test_no_feedback_is_nan() -> None:
    for kind in ("classification", "regression"):
        q = summarize(2, {}, kind)
        assert q.n == 0
        assert math.isnan(q.value) and math.isnan(q.low) and math.isnan(q.high)


def test_unknown_kind() -> None:
    with pytest.raises(ValueError):
        summarize(1, {"n": 1}, "ranking")


# --- ranking -----------------------------------------------------------------


def test_rank_classification() -> None:
    qs = [
        summarize(1, {"n": 100, "correct": 70}, "classification"),
        summarize(2, {"n": 0}, "classification"),
        summarize(3, {"n": 100, "correct": 90}, "classification"),
        summarize(4, {"n": 200, "correct": 140}, "classification"),  # ties with 1
        summarize(5, {"n": 0}, "classification"),
    ]
    assert [q.version for q in rank(qs)] == [3, 4, 1, 5, 2]


def test_rank_regression() -> None:
    def reg(version: int, n: int, mae: float) -> VersionQuality:
        e6 = round(mae * 1e6 * n)
        return summarize(version, {"n": n, "abs_err_e6": e6, "sq_err_e6": 4 * e6}, "regression")

    qs = [reg(1, 50, 2.0), reg(2, 0, 0.0), reg(3, 50, 0.5), reg(4, 50, 1.0), reg(5, 80, 0.5)]
    assert [q.version for q in rank(qs)] == [5, 3, 4, 1, 2]


def test_rank_refuses_mixed_metrics() -> None:
    with pytest.raises(ValueError):
        rank([summarize(1, {"n": 5, "correct": 3}, "classification"),
              summarize(2, {"n": 5, "abs_err_e6": 5, "sq_err_e6": 5}, "regression")])


# --- mSPRT -------------------------------------------------------------------


def test_msprt_statistic_matches_the_paper() -> None:
    # Equal arms of n: Johari et al. write Lambda with sigma^2 per observation:
    # sqrt(2s2 / (2s2 + n tau2)) exp(n^2 tau2 d^2 / (4 s2 (2s2 + n tau2))).
    n, tau2 = 400, 1e-3
    p1, p2 = 300 / n, 330 / n
    two_s2 = p1 * (1 - p1) + p2 * (1 - p2)
    d = p2 - p1
    expected = math.sqrt(two_s2 / (two_s2 + n * tau2)) * math.exp(
        n * n * tau2 * d * d / (2 * two_s2 * (two_s2 + n * tau2)))
    r = msprt(300, n, 330, n, tau2=tau2)
    assert r.difference == pytest.approx(d)
    assert r.statistic == pytest.approx(expected, rel=1e-12)
    assert r.p_value == pytest.approx(min(1.0, 1 / expected), rel=1e-12)
    assert r.decision == (TREATMENT_BETTER if expected >= 20 else NO_DECISION)


def test_msprt_directions() -> None:
    assert msprt(800, 1000, 700, 1000).decision == TREATMENT_WORSE
    assert msprt(700, 1000, 800, 1000).decision == TREATMENT_BETTER
    # Counting errors instead of successes: more of them is worse.
    assert msprt(200, 1000, 300, 1000, higher_is_better=False).decision == TREATMENT_WORSE
    r = msprt(800, 1000, 795, 1000)
    assert r.decision == NO_DECISION and r.p_value == 1.0


def test_msprt_degenerate_inputs() -> None:
    r = msprt(0, 0, 5, 10)
    assert (r.statistic, r.p_value, r.decision) == (1.0, 1.0, NO_DECISION)
    # An arm at 100% uses the pooled rate, so V > 0 and the test still works.
    r = msprt(1000, 1000, 900, 1000)
    assert math.isfinite(r.statistic) and r.decision == TREATMENT_WORSE
    r = msprt(50, 50, 50, 50)
    assert (r.difference, r.decision) == (0.0, NO_DECISION)
    with pytest.raises(ValueError):
        msprt(11, 10, 5, 10)


def _first_decisions(control: np.ndarray, treatment: np.ndarray, per_look: int) -> list[str]:
    """Run the test after every look of each experiment; its first decision (or none)."""
    out = []
    for c_row, t_row in zip(control, treatment, strict=True):
        decision = NO_DECISION
        for look, (c, t) in enumerate(zip(c_row, t_row, strict=True), start=1):
            n = look * per_look
            decision = msprt(int(c), n, int(t), n).decision
            if decision != NO_DECISION:
                break
        out.append(decision)
    return out


def test_msprt_aa_with_peeking_keeps_false_decisions_below_alpha() -> None:
    rng = np.random.default_rng(20240611)
    experiments, looks, per_look = 400, 40, 50
    # Cumulative successes of each arm at each look, both arms at 0.8.
    control = rng.binomial(per_look, 0.8, size=(experiments, looks)).cumsum(axis=1)
    treatment = rng.binomial(per_look, 0.8, size=(experiments, looks)).cumsum(axis=1)
    decisions = _first_decisions(control, treatment, per_look)
    rate = sum(d != NO_DECISION for d in decisions) / experiments
    print(f"A/A false decision rate with {looks} looks: {rate:.4f}")
    assert rate <= 0.05


def test_msprt_power_on_a_ten_point_drop() -> None:
    rng = np.random.default_rng(99)
    experiments, looks, per_look = 100, 20, 100  # 2,000 per arm in the end
    control = rng.binomial(per_look, 0.8, size=(experiments, looks)).cumsum(axis=1)
    treatment = rng.binomial(per_look, 0.7, size=(experiments, looks)).cumsum(axis=1)
    decisions = _first_decisions(control, treatment, per_look)
    power = sum(d == TREATMENT_WORSE for d in decisions) / experiments
    print(f"power, 0.80 vs 0.70 with 2,000 per arm: {power:.4f}")
    assert power >= 0.9


# --- Thompson sampling -------------------------------------------------------


def test_thompson_favours_the_better_arm() -> None:
    w = thompson_weights({1: (700, 1000), 2: (800, 1000), 3: (650, 1000)}, seed=1)
    assert set(w) == {1, 2, 3}
    assert w[2] > 0.9
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-12)


def test_thompson_splits_equal_arms() -> None:
    w = thompson_weights({1: (50, 100), 2: (50, 100)}, draws=20000, seed=3)
    assert w[1] == pytest.approx(0.5, abs=0.02) and sum(w.values()) == pytest.approx(1.0)
    assert thompson_weights({}) == {}
