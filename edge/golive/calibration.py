"""Calibration: the Brier score, reliability (ECE, MCE) on uniform bins, the calibration curve, and temperature
scaling of logits (``fit_temperature_bounded``, ``fit_temperature``; the softmax and NLL it scales are ``edge.numeric``'s).
Tested by tests/edge/golive/test_statistics.py (against scikit-learn) and tests/edge/golive/test_calibration.py
(the bounded temperature, by simulation)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medge.edge.errors import UsageError
from medge.edge.numeric import as_logits_and_labels, as_truth_and_score, log_softmax, nll

# The range fit_temperature searches. On validation cases whose classes are separable the NLL falls without end as T
# -> 0: a fit bounded only by T >= 1e-3 stops there in 36 % of 20-case splits at true AUC 0.99
# (tests/edge/golive/test_calibration.py's simulation), and exp(log_softmax) then rounds 98 % of such a site's
# probabilities to exactly 0 or 1, tying cases the logits rank apart (over 500 sites the AUC falls from 0.990 on
# logits to 0.979 on average). A fixed floor on T cannot prevent it: saturation depends on the logits divided by T,
# and float64 gives the larger class exactly 1.0 once two logits differ by more than 36.7 after the division
# (exp(-36.7) < 2**-53): at T = 0.05 a difference of 1.84, which resnet logits exceed routinely. (The smaller
# class reaches exactly 0 only beyond 745.) So the lower bound follows the logits: no validation case's spread
# (largest minus smallest logit) exceeds MAX_CALIBRATED_SPREAD after calibration. At 20 the larger probability is at
# most 1 - 2e-9 and float64 still tells apart logits that differ by 2.2e-16 * e**20 * T = 1.1e-7 * T (1.5e-5 * T at
# 25, 2.3e-3 * T at 30, measured), finer than the 1e-6 by which the edge's engines differ from PyTorch; a site case
# saturates only where its spread is 36.7 / 20 = 1.8 times the largest on the validation split, and ties the ranking
# only if cases of both classes lie that far out on the same side. Above TEMPERATURE_MAX the validation logits tell
# next to nothing about the labels (a logit difference of 4 moves the probability by 0.05 from 0.5); modern networks
# fit T of 1 to 3 (Guo et al. 2017).
MAX_CALIBRATED_SPREAD = 20.0
TEMPERATURE_MAX = 20.0
CAPPED_NOTES = {"low": "validation classes separable or nearly: T capped at {temperature:.3g}",
                "high": "validation logits near chance or far overconfident: T capped at {temperature:.3g}"}


def _probabilities(score) -> np.ndarray:
    """Scores that must be probabilities, in [0, 1]."""
    if score.size and (score.min() < 0 or score.max() > 1):
        raise UsageError("score must be a probability in [0, 1] here")
    return score


def brier_score(y, score) -> float:
    """Mean squared difference between the probability and the truth (``sklearn.metrics.brier_score_loss``).

    Args:
        y: truth, boolean or 0/1.
        score: the positive class's probability, in [0, 1].

    Returns:
        The Brier score (0 is perfect); NaN for no case.
    """
    t, s = as_truth_and_score(y, score)
    _probabilities(s)
    return float(np.mean((s - t) ** 2)) if t.size else math.nan


def _uniform_bins(y, score, bins: int):
    """(edges, bin index, y as float, score) for uniform bins on [0, 1], as sklearn's calibration_curve."""
    if isinstance(bins, (bool, np.bool_)) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise UsageError(f"bins must be a positive integer, got {bins!r}")
    t, s = as_truth_and_score(y, score)
    _probabilities(s)
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    # sklearn: searchsorted(edges[1:-1], score), side "left": bin i holds (edges[i], edges[i + 1]],
    # the first bin also 0.
    return edges, np.searchsorted(edges[1:-1], s), t.astype(np.float64), s


def reliability(y, score, bins: int = 10) -> dict:
    """Reliability diagram data and calibration errors on uniform bins of [0, 1].

    Bins as sklearn's ``calibration_curve(strategy="uniform")``: bin i holds the scores in
    (edges[i], edges[i + 1]], the first bin also 0.

    Args:
        y: truth, boolean or 0/1.
        score: the positive class's probability, in [0, 1].
        bins: the number of bins.

    Returns:
        {"bins": [{"low", "high", "count", "mean_score", "fraction_positive"}, ...] for every bin, the
        means None in empty bins; "ece": sum over non-empty bins of count / n * |fraction_positive -
        mean_score|; "mce": the largest of those gaps}; ece and mce NaN for no case.
    """
    edges, index, t, s = _uniform_bins(y, score, bins)
    total = np.bincount(index, minlength=bins)
    score_sum = np.bincount(index, weights=s, minlength=bins)
    positive_sum = np.bincount(index, weights=t, minlength=bins)
    rows, gaps = [], []
    for i in range(bins):
        count = int(total[i])
        mean_score = float(score_sum[i] / count) if count else None
        fraction = float(positive_sum[i] / count) if count else None
        if count:
            gaps.append((count, abs(fraction - mean_score)))
        rows.append({"low": float(edges[i]), "high": float(edges[i + 1]), "count": count,
                     "mean_score": mean_score, "fraction_positive": fraction})
    n = s.size
    ece = float(sum(c / n * g for c, g in gaps)) if n else math.nan
    mce = float(max(g for _, g in gaps)) if n else math.nan
    return {"bins": rows, "ece": ece, "mce": mce}


def calibration_curve(y, score, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Observed fraction of positives against mean score in the non-empty uniform bins.

    Equals ``sklearn.calibration.calibration_curve(y, score, n_bins=bins)``.

    Args:
        y: truth, boolean or 0/1.
        score: the positive class's probability, in [0, 1].
        bins: the number of bins.

    Returns:
        (prob_true, prob_pred) over the non-empty bins, lowest bin first.
    """
    _, index, t, s = _uniform_bins(y, score, bins)
    total = np.bincount(index, minlength=bins)
    score_sum = np.bincount(index, weights=s, minlength=bins)
    positive_sum = np.bincount(index, weights=t, minlength=bins)
    full = total != 0
    return positive_sum[full] / total[full], score_sum[full] / total[full]


def _nll_slope_curvature(z: np.ndarray, zy: np.ndarray, b: float) -> tuple[float, float]:
    """First and second derivative in b of the mean NLL of softmax(b * z)."""
    p = np.exp(log_softmax(b * z))
    mean_z = np.sum(p * z, axis=1)
    slope = float(np.mean(mean_z - zy))
    curvature = float(np.mean(np.sum(p * z * z, axis=1) - mean_z**2))
    return slope, curvature


@dataclass(frozen=True)
class TemperatureFit:
    """One temperature fitted on validation logits, and whether the fit stopped at an end of its range."""

    temperature: float
    at_bound: str | None  # "low": NLL still falling at the smallest T allowed (the classes separable on these
    #                       cases, or all but a few); "high": still falling at the largest (the logits near
    #                       chance, or overconfident beyond the range); None: a minimum inside the range
    nll: float  # the mean validation NLL at temperature
    low: float  # the range searched: max spread / MAX_CALIBRATED_SPREAD ...
    high: float  # ... to TEMPERATURE_MAX

    @property
    def note(self) -> str | None:
        """What a person reading the temperature must know, or None: ``temperature_note``."""
        return temperature_note(self.at_bound, self.temperature)


def temperature_note(at_bound: str | None, temperature: float) -> str | None:
    """"validation classes separable or nearly: T capped at 0.25" for a fit that stopped at an end of its range, else None."""
    return None if at_bound is None else CAPPED_NOTES[at_bound].format(temperature=temperature)


def temperature_bounds(z: np.ndarray) -> tuple[float, float]:
    """(low, high): the range of T searched for checked (N, C) logits z, from the widest row spread over
    MAX_CALIBRATED_SPREAD to TEMPERATURE_MAX."""
    low = float(np.max(np.ptp(z, axis=1))) / MAX_CALIBRATED_SPREAD
    return low, max(TEMPERATURE_MAX, low)  # logits spread beyond 400: T at the floor, which their size sets


def _minimise_b(z: np.ndarray, zy: np.ndarray, lo: float, hi: float) -> tuple[float, str | None]:
    """(b, at_bound) minimising the NLL of softmax(b * z) for b in [lo, hi]; at_bound named in T, as the fit's."""
    if _nll_slope_curvature(z, zy, lo)[0] >= 0:
        return lo, "high"
    if hi <= lo or _nll_slope_curvature(z, zy, hi)[0] <= 0:
        return hi, "low"
    b = min(max(1.0, lo), hi)
    for _ in range(200):
        slope, curvature = _nll_slope_curvature(z, zy, b)
        if slope == 0:
            break
        lo, hi = (b, hi) if slope < 0 else (lo, b)
        step = b - slope / curvature if curvature > 0 else math.nan
        nxt = step if lo < step < hi else math.sqrt(lo * hi)
        if abs(nxt - b) <= 1e-13 * b:
            b = nxt
            break
        b = nxt
    return b, None


def fit_temperature_bounded(logits, labels) -> TemperatureFit:
    """Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks"), within a stated range.

    One scalar T > 0 divides every logit; the argmax, and so every decision of a multi-class argmax
    and the ranking of cases by any one class's logit, is unchanged by any T > 0: only the probabilities
    are recalibrated. The NLL is convex in b = 1/T (a log-sum-exp of functions linear in b), so a
    Newton iteration on b safeguarded by bisection (on a log scale) finds its minimum deterministically,
    to about 1e-12 relative, within T in [largest row spread / MAX_CALIBRATED_SPREAD, TEMPERATURE_MAX]
    (the comment at MAX_CALIBRATED_SPREAD says why: the floor keeps float64 probabilities from rounding to
    exactly 0 or 1 and tying cases the logits rank apart). Where the NLL still falls at an end (every
    case right with a margin: T -> 0; logits near chance: T -> infinity) that end is returned
    and ``at_bound`` says which; where every row of logits is constant, the NLL does not depend on T and
    1.0 is returned.

    Args:
        logits: (N, C) float logits, N >= 2, finite (fit them on a validation set, not the training set).
        labels: N integers in [0, C).

    Returns:
        A ``TemperatureFit``: T, at_bound ("low", "high" or None), the NLL at T and the range searched.
    """
    z, y = as_logits_and_labels(logits, labels)
    if z.shape[0] < 2:
        raise UsageError(f"fit_temperature needs at least 2 cases, got {z.shape[0]}")
    low, high = temperature_bounds(z)
    if low == 0:  # every row constant
        return TemperatureFit(1.0, None, nll(z, y), low, high)
    b, at_bound = _minimise_b(z, z[np.arange(y.size), y], 1 / high, 1 / low)
    temperature = {"low": low, "high": high}.get(at_bound, float(1 / b))
    return TemperatureFit(temperature, at_bound, nll(z, y, temperature), low, high)


def fit_temperature(logits, labels) -> float:
    """``fit_temperature_bounded(logits, labels).temperature``: the T minimising the validation NLL in its range."""
    return fit_temperature_bounded(logits, labels).temperature
