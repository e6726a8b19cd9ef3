"""Calibration: the Brier score, reliability (ECE, MCE) on uniform bins, the calibration curve, and temperature
scaling of logits (``fit_temperature``; the softmax and NLL it scales are ``edge.numeric``'s).
Tested by tests/edge/golive/test_statistics.py (against scikit-learn)."""
from __future__ import annotations

import math

import numpy as np

from medge.edge.errors import UsageError
from medge.edge.numeric import as_logits_and_labels, as_truth_and_score, log_softmax

TEMPERATURE_RANGE = (1e-3, 1e3)  # fit_temperature searches T (as b = 1/T) in this range


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


def fit_temperature(logits, labels) -> float:
    """Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks"): the T minimising nll.

    One scalar T > 0 divides every logit; the argmax, and so every decision of a multi-class argmax
    and the ranking of cases by any one class's logit, is unchanged by any T > 0: only the probabilities
    are recalibrated. The NLL is convex in b = 1/T (a log-sum-exp of functions linear in b), so a
    Newton iteration on b safeguarded by bisection (on a log scale) within [1e-3, 1e3] finds its minimum
    deterministically, to about 1e-12 relative. Where the minimum lies outside that range (e.g. every
    case already right with a margin, when the NLL falls towards T = 0) the nearer end is returned;
    where every row of logits is constant, the NLL does not depend on T and 1.0 is returned.

    Args:
        logits: (N, C) float logits, N >= 2, finite (fit them on a validation set, not the training set).
        labels: N integers in [0, C).

    Returns:
        T as a float, in [1e-3, 1e3].
    """
    z, y = as_logits_and_labels(logits, labels)
    if z.shape[0] < 2:
        raise UsageError(f"fit_temperature needs at least 2 cases, got {z.shape[0]}")
    if np.all(np.ptp(z, axis=1) == 0):
        return 1.0
    zy = z[np.arange(y.size), y]
    t_low, t_high = TEMPERATURE_RANGE
    lo, hi = 1 / t_high, 1 / t_low
    if _nll_slope_curvature(z, zy, lo)[0] >= 0:
        return t_high
    if _nll_slope_curvature(z, zy, hi)[0] <= 0:
        return t_low
    b = 1.0
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
    return float(1 / b)
