"""Figures at a threshold: the confusion counts, and sensitivity, specificity, PPV, NPV and accuracy each with
a Wilson interval.
Tested by tests/edge/golive/test_statistics.py (against statsmodels and scikit-learn)."""
from __future__ import annotations

import math

import numpy as np

from medge.edge.errors import UsageError
from medge.edge.golive.distributions import critical_value, normal_quantile
from medge.edge.numeric import as_truth, as_truth_and_score


def _count(value, name: str) -> int:
    """A non-negative integer count."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise UsageError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion (as statsmodels' ``proportion_confint(method="wilson")``).

    Args:
        successes: the count of successes, 0 <= successes <= n.
        n: the count of trials.
        alpha: 1 - confidence level.

    Returns:
        (low, high) clipped to [0, 1]; (nan, nan) when n is 0.
    """
    z = critical_value(alpha)
    k, n = _count(successes, "successes"), _count(n, "n")
    if k > n:
        raise UsageError(f"successes ({k}) exceed n ({n})")
    if n == 0:
        return math.nan, math.nan
    p, z2 = k / n, z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return min(max(center - half, 0.0), 1.0), min(max(center + half, 0.0), 1.0)


def confusion(y, predicted_positive) -> dict:
    """Counts of the confusion matrix.

    Args:
        y: truth, boolean or 0/1.
        predicted_positive: the predictions, boolean or 0/1.

    Returns:
        {"tp", "fp", "tn", "fn"} as ints.
    """
    t, p = as_truth(y), as_truth(predicted_positive, "predicted_positive")
    if t.shape != p.shape:
        raise UsageError(f"y and predicted_positive differ in length: {t.size} and {p.size}")
    return {"tp": int(np.sum(t & p)), "fp": int(np.sum(~t & p)), "tn": int(np.sum(~t & ~p)), "fn": int(np.sum(t & ~p))}


def _proportion(successes: int, n: int, alpha: float) -> dict:
    """A proportion with its Wilson interval."""
    low, high = wilson_interval(successes, n, alpha)
    return {"value": successes / n if n else math.nan, "low": low, "high": high, "successes": successes, "n": n}


def binary_figures(y, score, threshold: float, alpha: float = 0.05) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy at a threshold, each with a Wilson interval.

    Args:
        y: truth, boolean or 0/1.
        score: scores; a case is positive when ``score >= threshold``.
        threshold: the operating point.
        alpha: 1 - confidence level.

    Returns:
        {"threshold", "n", "confusion": {"tp", "fp", "tn", "fn"}, "matrix": [[tn, fp], [fn, tp]]
        (rows: truth negative/positive; columns: predicted negative/positive, as sklearn's
        ``confusion_matrix``), and "sensitivity", "specificity", "ppv", "npv", "accuracy", each
        {"value", "low", "high", "successes", "n"}; value NaN when its n is 0}.
    """
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.number)) or threshold != threshold:
        raise UsageError(f"threshold must be a number, got {threshold!r}")
    critical_value(alpha)
    t, s = as_truth_and_score(y, score)
    c = confusion(t, s >= threshold)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    return {
        "threshold": float(threshold),
        "n": int(t.size),
        "confusion": c,
        "matrix": [[tn, fp], [fn, tp]],
        "sensitivity": _proportion(tp, tp + fn, alpha),
        "specificity": _proportion(tn, tn + fp, alpha),
        "ppv": _proportion(tp, tp + fp, alpha),
        "npv": _proportion(tn, tn + fn, alpha),
        "accuracy": _proportion(tp + tn, int(t.size), alpha),
    }


def newcombe_difference(k1: int, n1: int, k2: int, n2: int, alpha: float = 0.05) -> tuple[float, float, float]:
    """Difference of two independent proportions k1/n1 - k2/n2 with Newcombe's hybrid score interval.

    Newcombe (1998, Stat. Med. 17:873, method 10): from the Wilson intervals (l1, u1), (l2, u2) of each
    proportion, low = d - sqrt((p1 - l1)^2 + (u2 - p2)^2), high = d + sqrt((u1 - p1)^2 + (p2 - l2)^2). Both
    samples' uncertainty counts; as statsmodels' ``confint_proportions_2indep(method="newcomb")``.

    Returns:
        (difference, low, high); NaNs when either n is 0.
    """
    if not _count(n1, "n1") or not _count(n2, "n2"):
        return math.nan, math.nan, math.nan
    l1, u1 = wilson_interval(k1, n1, alpha)
    l2, u2 = wilson_interval(k2, n2, alpha)
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def detectable_difference(p_reference: float, n_reference: int, n_current: int, alpha: float,
                          power: float = 0.8) -> float:
    """The smallest change of a share (either way) that a two-sided two-sample test at ``alpha`` detects with
    probability ``power``, by the normal approximation (Fleiss, Levin & Paik 2003, eq. 4.14, without the
    continuity correction); the larger of the rise and the fall, or the one possible; inf if neither is."""
    z_a = -normal_quantile(alpha / 2)

    def power_at(p_current: float) -> float:
        pooled = (n_reference * p_reference + n_current * p_current) / (n_reference + n_current)
        null_sd = math.sqrt(pooled * (1 - pooled) * (1 / n_reference + 1 / n_current))
        sd = math.sqrt(p_reference * (1 - p_reference) / n_reference + p_current * (1 - p_current) / n_current)
        return _normal_cdf((abs(p_current - p_reference) - z_a * null_sd) / sd) if sd > 0 else 0.0

    found = []
    for end in (0.0, 1.0):
        if power_at(end) < power or end == p_reference:
            continue
        near, far = p_reference, end
        for _ in range(40):
            mid = (near + far) / 2
            near, far = (near, mid) if power_at(mid) >= power else (mid, far)
        found.append(abs(far - p_reference))
    return max(found) if found else math.inf


def detectable_share(tolerance: float, n: int, alpha: float, power: float = 0.8) -> float:
    """The true share that a one-sided test of ``share <= tolerance`` at ``alpha`` (the Wilson lower bound
    above the tolerance) detects with probability ``power`` at ``n`` records (normal approximation); inf if none."""
    z_a = -normal_quantile(alpha)
    if n < 1:
        return math.inf
    low, high = tolerance, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        hit = _normal_cdf((mid - tolerance - z_a * math.sqrt(tolerance * (1 - tolerance) / n))
                          / math.sqrt(mid * (1 - mid) / n)) >= power
        low, high = (low, mid) if hit else (mid, high)
    return high if high < 1 else math.inf
