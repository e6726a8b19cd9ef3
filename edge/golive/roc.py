"""Discrimination: the ROC curve and the AUC with DeLong's interval, for one set of cases or the difference
of two (this site's against the bundle's validation). The AUC itself is ``edge.numeric.roc_auc``.
Tested by tests/edge/golive/test_statistics.py (against scikit-learn)."""
from __future__ import annotations

import math

import numpy as np

from medge.edge.golive.distributions import critical_value
from medge.edge.numeric import as_truth_and_score, delong


def cumulative_counts(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fps, tps, thresholds) at each distinct score, highest first (as sklearn's confusion counts)."""
    order = np.argsort(score, kind="stable")[::-1]
    s, t = score[order], y[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1].astype(np.intp) if s.size else np.zeros(0, np.intp)
    tps = np.cumsum(t)[last]
    fps = 1 + last.astype(np.float64) - tps
    return fps, tps, s[last]


def roc_curve(y, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve, one point per distinct score (``sklearn.metrics.roc_curve(..., drop_intermediate=False)``).

    Args:
        y: truth, boolean or 0/1.
        score: scores, higher = more positive.

    Returns:
        (fpr, tpr, thresholds): thresholds descending, the first ``inf`` (no case positive, the point
        (0, 0)), then each distinct score; fpr and tpr of the rule ``score >= threshold``. fpr (tpr) is
        all NaN when there is no negative (positive) case.
    """
    t, s = as_truth_and_score(y, score)
    fps, tps, thresholds = cumulative_counts(t, s)
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, np.r_[np.inf, thresholds]


def auc_ci(y, score, alpha: float = 0.05) -> dict:
    """AUC with DeLong's standard error and a normal confidence interval.

    DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837; computed by the midrank algorithm of
    Sun & Xu (2014), IEEE Signal Processing Letters 21:1389. With perfectly separated classes the
    standard error is 0 and the interval collapses onto the AUC: DeLong's variance says nothing there.

    Args:
        y: truth, boolean or 0/1.
        score: scores, higher = more positive.
        alpha: 1 - confidence level (0.05: a 95% interval).

    Returns:
        {"auc", "se", "low", "high", "method": "DeLong", "n_positive", "n_negative"}: low/high are
        auc -/+ z * se clipped to [0, 1]. auc is NaN when a class is absent; se, low and high also
        when a class has a single case.
    """
    z = critical_value(alpha)
    t, s = as_truth_and_score(y, score)
    auc, var, m, n = delong(t, s)
    se = math.sqrt(var) if var == var else math.nan
    low, high = (min(max(auc - z * se, 0.0), 1.0), min(max(auc + z * se, 0.0), 1.0)) if se == se else (math.nan,) * 2
    return {"auc": auc, "se": se, "low": low, "high": high, "method": "DeLong", "n_positive": m, "n_negative": n}


def auc_difference(y1, score1, y2, score2, alpha: float = 0.05) -> dict:
    """AUC of set 1 minus AUC of set 2, for two independent sets of cases (this site's vs the bundle's validation).

    The sets share no case, so the DeLong variances add: se = sqrt(var_1 + var_2). (For two models
    scored on the same cases the covariance term would be needed; that is not this function.)

    Args:
        y1, score1: truth and scores of set 1.
        y2, score2: truth and scores of set 2.
        alpha: 1 - confidence level.

    Returns:
        {"difference", "se", "low", "high", "auc_1", "auc_2", "method": "DeLong (independent samples)"};
        low/high = difference -/+ z * se clipped to [-1, 1]; NaN where either set lacks a class.
    """
    z = critical_value(alpha)
    auc_1, var_1, _, _ = delong(*as_truth_and_score(y1, score1))
    auc_2, var_2, _, _ = delong(*as_truth_and_score(y2, score2))
    diff, var = auc_1 - auc_2, var_1 + var_2
    se = math.sqrt(var) if var == var else math.nan
    low, high = (max(diff - z * se, -1.0), min(diff + z * se, 1.0)) if se == se else (math.nan, math.nan)
    return {"difference": diff, "se": se, "low": low, "high": high, "auc_1": auc_1, "auc_2": auc_2,
            "method": "DeLong (independent samples)"}
