"""Model quality from ground-truth feedback: summaries, ranking and A/B decisions.

Feedback joined to predictions is kept in Redis as integer counters per model
version (error sums scaled by 1e6, so ``HINCRBY`` can add them). This module
turns those counters into a metric with a 95% interval (accuracy with a Wilson
interval, MAE with a normal one), ranks versions, and decides A/B tests with the
mixture sequential probability ratio test (mSPRT, Johari, Pekelis and Walsh,
"Always valid inference"), whose p-value stays valid however often it is looked
at. ``thompson_weights`` gives a bandit's traffic split instead of a fixed test.

Pure functions: no I/O, standard library and numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

CLASSIFICATION = "classification"
REGRESSION = "regression"
ACCURACY = "accuracy"
MAE = "mae"

TREATMENT_BETTER = "treatment better"
TREATMENT_WORSE = "treatment worse"
NO_DECISION = "no decision yet"

# Error sums are stored as integers scaled by this factor.
SCALE = 1_000_000
# math.exp overflows just above this; a larger log-likelihood ratio is reported as inf.
_MAX_LOG = 709.0

_METRIC = {CLASSIFICATION: ACCURACY, REGRESSION: MAE}
# Whether a higher value of the metric is the better one.
_HIGHER_IS_BETTER = {ACCURACY: True, MAE: False}


@dataclass(frozen=True)
class VersionQuality:
    """One version's quality on the feedback joined so far."""

    version: int
    kind: str
    n: int
    metric: str
    value: float
    low: float
    high: float
    rmse: float | None = None
    log_loss: float | None = None


@dataclass(frozen=True)
class SequentialResult:
    """The mSPRT's state after one look at the two arms."""

    difference: float
    statistic: float
    p_value: float
    decision: str


def _count(counters: Mapping[str, int], name: str) -> int:
    # A field that was never incremented is absent from the Redis hash.
    return int(counters.get(name, 0))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion; (nan, nan) when n == 0.

    Unlike the Wald interval it stays inside [0, 1] and keeps its coverage near
    0 and 1, where a good model's accuracy lives.
    """
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def summarize(
    version: int, counters: Mapping[str, int], kind: str, z: float = 1.96
) -> VersionQuality:
    """A version's metric and interval from its feedback counters.

    Classification: accuracy, Wilson interval, log loss when probabilities were
    given. Regression: MAE with a normal-approximation interval, and RMSE.
    """
    if kind not in _METRIC:
        raise ValueError(f"kind must be {CLASSIFICATION!r} or {REGRESSION!r}, not {kind!r}")
    n = _count(counters, "n")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    metric = _METRIC[kind]
    if n == 0:
        return VersionQuality(version, kind, 0, metric, math.nan, math.nan, math.nan)

    if kind == CLASSIFICATION:
        correct = _count(counters, "correct")
        if not 0 <= correct <= n:
            raise ValueError(f"correct must be in [0, n={n}], got {correct}")
        low, high = wilson_interval(correct, n, z)
        ll_n = _count(counters, "logloss_n")
        log_loss = _count(counters, "logloss_e6") / SCALE / ll_n if ll_n > 0 else None
        return VersionQuality(version, kind, n, metric, correct / n, low, high,
                              log_loss=log_loss)

    mean_abs = _count(counters, "abs_err_e6") / SCALE / n
    mean_sq = _count(counters, "sq_err_e6") / SCALE / n
    # Var|e| = E[e^2] - E[|e|]^2; the 1e6 rounding can push it a hair below 0.
    var_abs = max(0.0, mean_sq - mean_abs * mean_abs)
    half = z * math.sqrt(var_abs / n)
    # An MAE cannot be negative, so the interval is cut at 0.
    return VersionQuality(version, kind, n, metric, mean_abs, max(0.0, mean_abs - half),
                          mean_abs + half, rmse=math.sqrt(mean_sq))


def rank(qualities: Iterable[VersionQuality]) -> list[VersionQuality]:
    """Best first; versions without feedback last; ties by newer version first."""
    items = list(qualities)
    metrics = {q.metric for q in items}
    if len(metrics) > 1:
        # An accuracy and an MAE cannot be put on one scale.
        raise ValueError(f"cannot rank different metrics together: {sorted(metrics)}")

    def key(q: VersionQuality) -> tuple[bool, float, int]:
        if q.n == 0 or math.isnan(q.value):
            return True, 0.0, -q.version
        score = -q.value if _HIGHER_IS_BETTER[q.metric] else q.value
        return False, score, -q.version

    return sorted(items, key=key)


def msprt(
    control_successes: int,
    control_n: int,
    treatment_successes: int,
    treatment_n: int,
    *,
    alpha: float = 0.05,
    tau2: float = 1e-3,
    higher_is_better: bool = True,
) -> SequentialResult:
    """Always-valid test of treatment vs control on a proportion (mSPRT).

    The difference of the two proportions is taken as normal with variance V,
    and the likelihood ratio against "no difference" is mixed over a N(0, tau2)
    prior on the true difference:

        Lambda = sqrt(V / (V + tau2)) * exp(tau2 * d^2 / (2 V (V + tau2)))

    Under no difference Lambda is a martingale, so stopping the first time
    Lambda >= 1/alpha keeps the false decision rate below alpha at any number
    of looks. tau2 is the squared size of difference expected (1e-3: about 3
    points). Pass ``higher_is_better=False`` when the successes count errors.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not tau2 > 0.0:
        raise ValueError(f"tau2 must be > 0, got {tau2}")
    for s, n, arm in ((control_successes, control_n, "control"),
                      (treatment_successes, treatment_n, "treatment")):
        if n < 0 or not 0 <= s <= n:
            raise ValueError(f"{arm}: successes must be in [0, n], got {s} of {n}")
    if control_n == 0 or treatment_n == 0:
        return SequentialResult(math.nan, 1.0, 1.0, NO_DECISION)

    p1 = control_successes / control_n
    p2 = treatment_successes / treatment_n
    d = p2 - p1
    if p1 in (0.0, 1.0) or p2 in (0.0, 1.0):
        # An arm at 0 or 1 has zero plug-in variance; the pooled rate keeps V > 0.
        p = (control_successes + treatment_successes) / (control_n + treatment_n)
        v = p * (1.0 - p) * (1.0 / control_n + 1.0 / treatment_n)
    else:
        v = p1 * (1.0 - p1) / control_n + p2 * (1.0 - p2) / treatment_n
    if v <= 0.0:
        # Both arms all successes (or all failures): d == 0, no evidence either way.
        return SequentialResult(d, 1.0, 1.0, NO_DECISION)

    # In logs: at large n the exponent outgrows a float long after the decision.
    log_lambda = 0.5 * math.log(v / (v + tau2)) + tau2 * d * d / (2.0 * v * (v + tau2))
    statistic = math.inf if log_lambda > _MAX_LOG else math.exp(log_lambda)
    p_value = min(1.0, math.exp(-log_lambda))
    decision = NO_DECISION
    if log_lambda >= -math.log(alpha) and d != 0.0:
        better = d > 0.0 if higher_is_better else d < 0.0
        decision = TREATMENT_BETTER if better else TREATMENT_WORSE
    return SequentialResult(d, statistic, p_value, decision)


def thompson_weights(
    arms: Mapping[int, tuple[int, int]], draws: int = 10000, seed: int | None = None
) -> dict[int, float]:
    """Thompson sampling traffic split: P(arm is best) under Beta(1+s, 1+n-s) posteriors.

    Estimated as the fraction of ``draws`` joint posterior samples in which each
    arm has the highest rate; the weights sum to 1.
    """
    if draws <= 0:
        raise ValueError(f"draws must be > 0, got {draws}")
    if not arms:
        return {}
    versions = list(arms)
    s = np.empty(len(versions))
    f = np.empty(len(versions))
    for i, v in enumerate(versions):
        successes, n = arms[v]
        if n < 0 or not 0 <= successes <= n:
            raise ValueError(f"version {v}: successes must be in [0, n], got {successes} of {n}")
        s[i], f[i] = successes, n - successes
    rng = np.random.default_rng(seed)
    # One row per draw, one column per arm; broadcasting gives each column its posterior.
    samples = rng.beta(1.0 + s, 1.0 + f, size=(draws, len(versions)))
    wins = np.bincount(np.argmax(samples, axis=1), minlength=len(versions))
    return {v: float(w) / draws for v, w in zip(versions, wins, strict=True)}
