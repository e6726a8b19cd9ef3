"""The numeric core: one softmax, one log-loss, one AUC with mid-ranks, one latency summary, and the argument
checks they share. Numpy and the standard library only.

Everything that needs one of these figures uses these: the edge's predictions and operating point
(``edge.decision``), the go-live statistics (``edge.golive``), training's validation metrics, export's
calibration and parity, ``medge check`` and the benchmarks. Two copies drift: a probability computed one
way at export and another way at the edge can fall one ULP on the other side of a threshold chosen among
those very probabilities.

Usage::

    from medge.edge.numeric import latency_summary, nll, roc_auc, softmax
    p = softmax(logits, temperature=1.3)         # (N, C) float64, rows sum to 1
    loss = nll(logits, labels)                   # mean NLL in nats
    auc = roc_auc(labels == 1, p[:, 1])          # NaN when a class is absent
    s = latency_summary(times_ms)                # {"n", "p50_ms", "p90_ms", "p99_ms", "mean_ms", ...}

Bad arguments (NaN or infinite values, labels other than 0/1, mismatched lengths) raise
``medge.edge.errors.UsageError``. Tested by tests/edge/test_numeric.py.
"""
from __future__ import annotations

import math

import numpy as np

from medge.edge.errors import UsageError

# -- argument checks (shared with edge.golive) ----------------------------------------------------------------


def as_truth(y, name: str = "y") -> np.ndarray:
    """y as a 1-D bool array; 0/1 or bool only."""
    a = np.asarray(y)
    if a.ndim != 1:
        raise UsageError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype == bool:
        return a
    if a.size and not (np.issubdtype(a.dtype, np.number) and np.all((a == 0) | (a == 1))):
        raise UsageError(f"{name} must be boolean or 0/1 (True or 1 = positive class)")
    return a.astype(bool)


def as_values(x, name: str) -> np.ndarray:
    """x as a 1-D finite float64 array."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be numbers") from None
    if a.ndim != 1:
        raise UsageError(f"{name} must be 1-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise UsageError(f"{name} has NaN or infinite values")
    return a


def as_truth_and_score(y, score) -> tuple[np.ndarray, np.ndarray]:
    """Checked (y, score) of the same length."""
    t, s = as_truth(y), as_values(score, "score")
    if t.shape != s.shape:
        raise UsageError(f"y and score differ in length: {t.size} and {s.size}")
    return t, s


def as_logits(logits) -> np.ndarray:
    """Logits as a finite float64 array of 1 or 2 dimensions."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim not in (1, 2) or z.shape[-1] < 1:
        raise UsageError(f"logits must be (C,) or (N, C), got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise UsageError("logits have NaN or infinite values")
    return z


def as_temperature(temperature) -> float:
    """A finite temperature > 0."""
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, (int, float, np.number)):
        raise UsageError(f"temperature must be a number, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise UsageError(f"temperature must be finite and > 0, got {temperature!r}")
    return float(temperature)


def as_logits_and_labels(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) logits and N integer labels in [0, C)."""
    z = as_logits(logits)
    if z.ndim != 2:
        raise UsageError(f"logits must be (N, C), got shape {z.shape}")
    y = np.asarray(labels)
    if y.ndim != 1 or y.size != z.shape[0]:
        raise UsageError(f"labels must be 1-D with one label per row of logits ({z.shape[0]}), got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"labels must be integers, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise UsageError(f"labels must be in [0, {z.shape[1]}), got {y.min()}..{y.max()}")
    return z, y.astype(np.intp)


# -- softmax and log-loss -------------------------------------------------------------------------------------


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log softmax of float64 logits, stable (max subtracted)."""
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, in float64, stable for large logits.

    Args:
        logits: (C,) or (N, C).
        temperature: T > 0; T > 1 softens, T < 1 sharpens. The argmax is the same for every T.

    Returns:
        Probabilities of the same shape, rows summing to 1.
    """
    z = as_logits(logits) / as_temperature(temperature)
    return np.exp(log_softmax(z))


def sigmoid(z) -> np.ndarray:
    """Element-wise logistic function in float64, stable for large |z| (no overflow warning)."""
    z = np.asarray(z, np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (cross-entropy) of integer labels under softmax(logits / temperature).

    Args:
        logits: (N, C).
        labels: N integers in [0, C).
        temperature: T > 0.

    Returns:
        The mean NLL in nats; NaN for no case.
    """
    z, y = as_logits_and_labels(logits, labels)
    t = as_temperature(temperature)
    if not y.size:
        return math.nan
    return float(-np.mean(log_softmax(z / t)[np.arange(y.size), y]))


# -- AUC with mid-ranks ---------------------------------------------------------------------------------------


def midranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given the mean of the ranks they span (``scipy.stats.rankdata``)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]]) if x.size else np.zeros(0, np.intp)
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def delong(y: np.ndarray, score: np.ndarray) -> tuple[float, float, int, int]:
    """(auc, variance, n_positive, n_negative) of checked arrays by DeLong's placements, with the midranks of
    Sun & Xu (2014); auc NaN when a class is absent, variance NaN when a class has fewer than two cases."""
    pos, neg = score[y], score[~y]
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        return math.nan, math.nan, m, n
    combined = midranks(np.concatenate([pos, neg]))
    # A positive's placement: the share of negatives it outscores (ties half); a negative's: the share
    # of positives that outscore it.
    v_pos = (combined[:m] - midranks(pos)) / n
    v_neg = 1 - (combined[m:] - midranks(neg)) / m
    auc = float(v_pos.mean())
    if m < 2 or n < 2:  # a variance of placements needs two cases of each class
        return auc, math.nan, m, n
    return auc, float(v_pos.var(ddof=1) / m + v_neg.var(ddof=1) / n), m, n


def roc_auc(y, score) -> float:
    """Area under the ROC curve: the probability that a positive outscores a negative, ties counting half.

    Equals ``sklearn.metrics.roc_auc_score``.

    Args:
        y: truth, boolean or 0/1.
        score: scores, higher = more positive.

    Returns:
        The AUC; NaN when a class is absent.
    """
    t, s = as_truth_and_score(y, score)
    return delong(t, s)[0]


# -- latency summary ------------------------------------------------------------------------------------------


def latency_summary(times_ms, images_per_call: int = 1) -> dict:
    """The one summary of timings: count, p50, p90 and p99 (linear interpolation between the sorted values,
    numpy's default), mean, min, max (ms per call) and throughput (images/s at the mean). NaN for no timing."""
    xs = np.sort(np.asarray([float(v) for v in times_ms], np.float64))
    if not xs.size:
        nan = math.nan
        return {"n": 0, "p50_ms": nan, "p90_ms": nan, "p99_ms": nan, "mean_ms": nan, "min_ms": nan, "max_ms": nan,
                "images_per_s": nan}
    p50, p90, p99 = (float(v) for v in np.percentile(xs, [50, 90, 99]))
    mean = float(xs.mean())
    return {"n": int(xs.size), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": mean,
            "min_ms": float(xs[0]), "max_ms": float(xs[-1]),
            "images_per_s": 1000.0 * images_per_call / mean if mean > 0 else math.nan}
