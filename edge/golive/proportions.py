"""Figures at a threshold: the confusion counts, and sensitivity, specificity, PPV, NPV and accuracy each with
a Wilson interval.
Tested by tests/edge/golive/test_statistics.py (against statsmodels and scikit-learn)."""
from __future__ import annotations

import math

import numpy as np

from medge.edge.errors import UsageError
from medge.edge.golive.distributions import critical_value
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
