"""Validation metrics in numpy: accuracy, balanced accuracy, sensitivity/specificity, ROC AUC."""
from __future__ import annotations

import numpy as np

# Metrics where a larger value is better; "loss" is the one where smaller is.
HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "balanced_accuracy": True, "loss": False}


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic; NaN when one class is absent."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rankdata(np.asarray(score, np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """All validation figures for one set of predictions.

    Args:
        labels: (N,) true class indices.
        probs: (N, C) class probabilities.
        classes: the C class names.

    Returns:
        dict with accuracy, balanced_accuracy, auc (binary: of the second class,
        as for ``sklearn.metrics.roc_auc_score``; else macro one-vs-rest),
        per-class sensitivity and specificity, the confusion matrix (rows =
        truth, columns = prediction) and the count. NaN where undefined.
    """
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    c = len(classes)
    pred = probs.argmax(1)
    cm = np.zeros((c, c), np.int64)
    np.add.at(cm, (labels, pred), 1)
    tp = np.diag(cm).astype(np.float64)
    fn = cm.sum(1) - tp
    fp = cm.sum(0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp / (tp + fn)
        spec = tn / (tn + fp)
    if c == 2:
        auc = roc_auc(labels == 1, probs[:, 1])
    else:
        aucs = [roc_auc(labels == k, probs[:, k]) for k in range(c)]
        auc = float(np.mean(aucs)) if not np.isnan(aucs).any() else float("nan")
    return {
        "n": int(len(labels)),
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "balanced_accuracy": float(np.nanmean(sens)) if not np.isnan(sens).all() else float("nan"),
        "auc": auc,
        "sensitivity": {k: float(v) for k, v in zip(classes, sens, strict=True)},
        "specificity": {k: float(v) for k, v in zip(classes, spec, strict=True)},
        "confusion": cm.tolist(),
    }
