"""Validation metrics in numpy: accuracy, balanced accuracy, sensitivity/specificity, ROC AUC, and the loss;
for multi-label models, per-finding AUC and the mean over findings.

The AUC, softmax and NLL are the edge's numeric core (``medge.edge.numeric``): the figures of training and
of go-live are computed by the same code."""
from __future__ import annotations

import numpy as np

from medge.edge.numeric import nll, roc_auc, softmax

# Metrics where a larger value is better; "loss" is the one where smaller is.
HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "balanced_accuracy": True, "loss": False, "mean_auc": True}
# What each task can keep best.pt by: "auc" of a multi-label run is its mean_auc; "mean_auc" of a single-label
# run is its auc.
TASK_METRICS = {"single": {"auc": "auc", "mean_auc": "auc", "accuracy": "accuracy",
                           "balanced_accuracy": "balanced_accuracy", "loss": "loss"},
                "multilabel": {"auc": "mean_auc", "mean_auc": "mean_auc", "loss": "loss"}}


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


def bce_with_logits(logits, targets) -> float:
    """Mean binary cross-entropy of sigmoid(logits) over the entries whose target is not NaN (NaN = masked).

    Args:
        logits: any shape; targets: the same shape, 1.0, 0.0 or NaN.

    Returns:
        The mean over unmasked entries in nats (as ``torch.nn.BCEWithLogitsLoss`` on them); NaN when all are masked.
    """
    z, y = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    keep = ~np.isnan(y)
    if not keep.any():
        return float("nan")
    z, y = z[keep], y[keep]
    # sigmoid(z) is the softmax of the two logits [0, z]: the binary log-loss is the two-class NLL
    return nll(np.stack([np.zeros_like(z), z], axis=1), y.astype(np.int64))


def multilabel_metrics(targets: np.ndarray, logits: np.ndarray, findings: list[str]) -> dict:
    """Validation figures of a multi-label model: one AUC per finding, their mean, and the masked BCE loss.

    Args:
        targets: (N, K) 1.0, 0.0 or NaN (masked: an uncertain label left out of loss and metrics).
        logits: (N, K), one logit per finding.
        findings: the K finding names.

    Returns:
        dict with n, mean_auc (over the findings that have an AUC; NaN when none has), loss (mean BCE over
        unmasked entries, without pos_weight), per_finding {name: {auc, positives, negatives, masked, note}}:
        auc NaN, and a note saying why, for a finding without positives or negatives among its unmasked cases.
    """
    y, z = np.asarray(targets, np.float64).reshape(-1, len(findings)), np.asarray(logits, np.float64)
    finite = bool(np.isfinite(z).all())
    per = {}
    for k, name in enumerate(findings):
        keep = ~np.isnan(y[:, k])
        pos, neg = int((y[keep, k] == 1).sum()), int((y[keep, k] == 0).sum())
        note = None
        if not pos or not neg:
            note = f"no {'positive' if not pos else 'negative'} case in this split: no AUC"
        auc = roc_auc(y[keep, k] == 1, z[keep, k]) if finite and note is None else float("nan")
        per[name] = {"auc": auc, "positives": pos, "negatives": neg, "masked": int((~keep).sum()), "note": note}
    aucs = [p["auc"] for p in per.values() if not np.isnan(p["auc"])]
    return {"n": int(len(y)), "mean_auc": float(np.mean(aucs)) if aucs else float("nan"),
            "loss": bce_with_logits(z, y) if finite else float("nan"), "per_finding": per}
