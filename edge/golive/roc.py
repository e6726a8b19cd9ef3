"""Discrimination: the ROC curve and the AUC with Newcombe's (2006) score-type interval and DeLong's standard error,
for one set of cases, or the difference of two (this site's against the bundle's validation, DeLong's, on the raw
scale). The AUC itself is ``edge.numeric.roc_auc``.
Tested by tests/edge/golive/test_roc.py (coverage by simulation) and test_statistics.py (against scikit-learn, a
brute-force DeLong and scipy's root finder)."""
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


AUC_METHOD = "Newcombe score (2006, method 5)"  # auc_ci's interval, as reports name it


def newcombe_variance(theta: float, m: int, n: int) -> float:
    """The variance of the AUC estimate at a true AUC ``theta``, m positive and n negative cases (Newcombe 2006,
    method 5): Hanley & McNeil's [theta (1 - theta) + (m - 1)(Q1 - theta^2) + (n - 1)(Q2 - theta^2)] / (m n), with
    Q1 = theta / (2 - theta) and Q2 = 2 theta^2 / (1 + theta), and m - 1, n - 1 both replaced by (m + n) / 2 - 1:
    theta (1 - theta) [1 + ((m + n) / 2 - 1) ((1 - theta) / (2 - theta) + theta / (1 + theta))] / (m n)."""
    k = (m + n) / 2 - 1
    return theta * (1 - theta) * (1 + k * ((1 - theta) / (2 - theta) + theta / (1 + theta))) / (m * n)


def score_interval(auc: float, m: int, n: int, z: float) -> tuple[float, float]:
    """(low, high): the two roots of (auc - theta)^2 = z^2 newcombe_variance(theta, m, n), one in [0, auc], one in
    [auc, 1], each by bisection (the variance is that of the true AUC, as Wilson's interval takes p's, not p-hat's).
    Both are finite for any auc in [0, 1]: auc = 1 (classes perfectly separated) gives high = 1 and low < 1."""
    def root(a: float, b: float, sign: float) -> float:  # sign * (theta - auc) - z sqrt(V) is < 0 at a, >= 0 at b
        for _ in range(200):
            mid = (a + b) / 2
            if mid in (a, b):
                break
            if sign * (mid - auc) - z * math.sqrt(newcombe_variance(mid, m, n)) < 0:
                a = mid
            else:
                b = mid
        return (a + b) / 2

    return (root(auc, 0.0, -1.0) if auc > 0 else 0.0), (root(auc, 1.0, 1.0) if auc < 1 else 1.0)


def auc_ci(y, score, alpha: float = 0.05) -> dict:
    """AUC with Newcombe's score-type confidence interval, and DeLong's standard error for information.

    The interval is method 5 of Newcombe (2006), "Confidence intervals for an effect size measure based on the
    Mann-Whitney statistic. Part 2: asymptotic methods and evaluation", Stat Med 25:559: the AUCs theta whose
    distance from the estimate is z standard errors, (auc - theta)^2 = z^2 V(theta), V Hanley & McNeil's (1982,
    Radiology 143:29) variance with both class sizes less one replaced by (m + n) / 2 - 1 (``newcombe_variance``).
    Taking the variance at theta, not at the estimate, keeps it inside [0, 1] and gives perfectly separated classes
    (AUC 1, or 0) a real interval with a lower bound below 1, where a Wald interval on any scale has width 0 or
    none. In seeded binormal simulations (docs/go-live.md) the 95% interval covered 0.963, 0.969 and 0.961 at AUC
    0.90 and n = 30, 100, 1000, and 0.983 and 0.995 at AUC 0.99 and n = 100, 1000, with the true AUC below the
    lower bound (the side a requirement judges) at most 1.35% of the time. DeLong's interval on the logit scale
    (Pepe 2003, sec. 5.2; Qin & Hotilovac 2008, Stat Methods Med Res 17:207), this function's before, covered
    0.922 at AUC 0.99 and n = 100, where 1.35% of the samples were perfectly separated and had none.

    The standard error ``se`` is DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837, by the midrank
    algorithm of Sun & Xu (2014), IEEE Signal Processing Letters 21:1389 (NaN with a single case of a class, 0
    with perfectly separated classes); the interval does not use it.

    Args:
        y: truth, boolean or 0/1.
        score: scores, higher = more positive.
        alpha: 1 - confidence level (0.05: a 95% interval).

    Returns:
        {"auc", "se", "low", "high", "method": ``AUC_METHOD``, "n_positive", "n_negative", "note"}: ``note`` is
        None, or why low and high are NaN (a class is absent: auc NaN too).
    """
    z = critical_value(alpha)
    t, s = as_truth_and_score(y, score)
    auc, var, m, n = delong(t, s)
    se = math.sqrt(var) if var == var else math.nan
    low, high, note = math.nan, math.nan, "a class is absent: no AUC"
    if auc == auc:
        (low, high), note = score_interval(auc, m, n, z), None
    return {"auc": auc, "se": se, "low": low, "high": high, "method": AUC_METHOD, "n_positive": m,
            "n_negative": n, "note": note}


def auc_difference(y1, score1, y2, score2, alpha: float = 0.05) -> dict:
    """AUC of set 1 minus AUC of set 2, for two independent sets of cases (this site's vs the bundle's validation).

    The sets share no case, so the DeLong variances add: se = sqrt(var_1 + var_2). (For two models
    scored on the same cases the covariance term would be needed; that is not this function.) The interval is
    Wald's on the raw scale, not a score interval as ``auc_ci``'s: Newcombe's variance is a function of one
    AUC, and a difference of two has no such single parameter.

    Args:
        y1, score1: truth and scores of set 1.
        y2, score2: truth and scores of set 2.
        alpha: 1 - confidence level.

    Returns:
        {"difference", "se", "low", "high", "auc_1", "auc_2", "method": "DeLong (independent samples)"};
        low/high = difference -/+ z * se clipped to [-1, 1]; NaN where either set lacks a class, or where the
        standard error is 0 (both sets perfectly separated, say), with ``note`` saying why (None otherwise).
    """
    z = critical_value(alpha)
    auc_1, var_1, _, _ = delong(*as_truth_and_score(y1, score1))
    auc_2, var_2, _, _ = delong(*as_truth_and_score(y2, score2))
    diff, var = auc_1 - auc_2, var_1 + var_2
    se = math.sqrt(var) if var == var else math.nan
    note = ("a set lacks a class or has a single case of one: no interval" if se != se
            else "standard error 0: no interval" if se == 0 else None)
    low, high = (max(diff - z * se, -1.0), min(diff + z * se, 1.0)) if note is None else (math.nan, math.nan)
    return {"difference": diff, "se": se, "low": low, "high": high, "auc_1": auc_1, "auc_2": auc_2,
            "method": "DeLong (independent samples)", "note": note}
