"""Validation metrics in numpy: accuracy, balanced accuracy, sensitivity/specificity, ROC AUC, and the loss.

The AUC, softmax and NLL are the edge's numeric core (``medge.edge.numeric``): the figures of training and
of go-live are computed by the same code."""
from __future__ import annotations

import numpy as np

from medge.edge.numeric import nll, roc_auc, softmax

# Metrics where a larger value is better; "loss" is the one where smaller is.
HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "balanced_accuracy": True, "loss": False}


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
    if not np.isfinite(probs).all():  # a diverged model: no AUC, the other figures still say how bad it is
        auc = float("nan")
    elif c == 2:
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


def logit_metrics(labels: np.ndarray, logits: np.ndarray, classes: list[str]) -> dict:
    """``classification_metrics`` of softmax(logits), plus "loss", the mean cross-entropy (NLL) of the labels.
    Non-finite logits (a diverged model) give NaN probabilities and loss rather than an error."""
    labels, logits = np.asarray(labels, np.int64), np.asarray(logits, np.float64)
    if not np.isfinite(logits).all():
        return {**classification_metrics(labels, np.full(logits.shape, np.nan), classes), "loss": float("nan")}
    return {**classification_metrics(labels, softmax(logits), classes), "loss": nll(logits, labels)}
