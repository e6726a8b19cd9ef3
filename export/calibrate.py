"""Calibration and the operating point, chosen at export on the validation split (``medge.edge.decision``).

Steps: the trained model's logits on every validation image (through ``edge.preprocess``,
as the edge reads them) -> one temperature T minimising the NLL (temperature scaling) within a range that keeps
the calibrated probabilities from rounding to exactly 0 or 1 (``edge.golive.calibration``;
a fit that stops at an end of the range is recorded, ``at_bound``, and said)
-> for two classes, the threshold on the positive class's calibrated probability that
meets the criterion (``--operating-point sensitivity=0.95`` by default) -> the sealed
manifest section, with the validation ROC, AUC and scores that ``medge validate`` and
``medge monitor`` compare a site's cases with.

A sensitivity or specificity target is met by a one-sided lower confidence bound
(``--confidence``, 95% by default) from the order statistics of the validation scores
(``edge.golive.thresholds``), not by the validation point estimate, which a site's true
sensitivity falls short of about 6 times in 10 in simulation. A split too small for the
target at that confidence stops the export (exit 2, naming the cases needed), unless
``--operating-point-unsupported`` stores the point-estimate threshold, marked so in
the section (``guarantee.supported`` false) and everywhere the bundle is shown.
A site still confirms the operating point on its own cases (``medge validate``).
"""
from __future__ import annotations

import numpy as np

from medge.edge import golive as ev
from medge.edge.decision import SECTION, OperatingPoint, default_positive, guarantee_text, seal
from medge.edge.errors import ExportError, MedgeError, UsageError
from medge.edge.preprocess import preprocess_file

DEFAULT_CRITERION = "sensitivity=0.95"


def resolve_positive(classes: list[str], positive: str | None) -> tuple[str, str]:
    """The positive class and how it was chosen: as given, the class that is not "normal", else the second class."""
    if positive is not None:
        if positive not in classes:
            raise ExportError(f"--positive {positive!r} is not a class of the model ({classes})")
        return positive, "given (--positive)"
    return default_positive(classes)


MIN_CASES, MIN_PER_CLASS = 20, 5  # below these a temperature and a threshold are noise


def too_few(labels: np.ndarray, classes: list[str]) -> str | None:
    """Why the validation cases cannot calibrate the model (too few, or a class with too few), or None."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(classes))
    if len(labels) < MIN_CASES or counts.min() < MIN_PER_CLASS:
        per_class = dict(zip(classes, counts.tolist(), strict=True))
        return (f"{len(labels)} readable validation images ({per_class}): calibration and a threshold need "
                f"at least {MIN_CASES}, and {MIN_PER_CLASS} of each class")
    return None


def run_split(ck) -> tuple[float, int]:
    """(val_fraction, seed) of the run that wrote checkpoint ``ck`` (its train_config), so that class folders without
    a val/ folder are split as in training; ``discover``'s defaults (0.2, 0) where it records none."""
    train_config = ck["train_config"] if "train_config" in ck else {}
    return float(train_config.get("val_fraction", 0.2)), int(train_config.get("seed", 0))


def validation_logits(model, data: str, ck, limit: int, log, chunk: int = 32):
    """The model's logits on the validation split of ``data`` (at most ``limit`` images, evenly spread), split as the
    run split it (``run_split``: its val fraction and seed).

    Returns:
        (logits float64 (N, C), labels int (N,), the number of unreadable images skipped).
    """
    from medge.train.data import discover

    _, splits = discover(data, *run_split(ck))
    logits, labels, skipped = split_logits(model, splits["val"], ck.preprocess, limit, log, data, chunk)
    return logits, np.asarray(labels, np.int64), skipped


def split_logits(model, split, pcfg, limit: int, log, where: str, chunk: int = 32):
    """The model's logits on a split's images (at most ``limit``, evenly spread) and the labels of those read.

    Returns:
        (logits float64 (N, C), the N labels as the split holds them, the number of unreadable images skipped).

    Raises:
        ExportError: no image of the split could be read (``where`` names the data).
    """
    from medge.export.onnx_export import torch_logits

    pick = np.unique(np.linspace(0, len(split) - 1, min(limit, len(split))).round().astype(int))
    logits, labels, skipped = [], [], 0
    for start in range(0, len(pick), chunk):
        tensors = []
        for i in pick[start : start + chunk]:
            try:
                tensors.append(preprocess_file(split.paths[i], pcfg))
                labels.append(split.labels[i])
            except MedgeError as e:
                skipped += 1
                log(f"calibration: skipping unreadable image: {e}")
        if tensors:
            logits.append(torch_logits(model, np.stack(tensors)).astype(np.float64))
    if not logits:
        raise ExportError(f"{where}: no readable validation image to calibrate on")
    return np.concatenate(logits), labels, skipped


def operating_point_section(logits: np.ndarray, labels: np.ndarray, classes: list[str], criterion: str,
                            positive: str | None, source: str, skipped: int = 0,
                            confidence: float = ev.DEFAULT_CONFIDENCE, unsupported: bool = False) -> dict:
    """The sealed ``operating_point`` manifest section (``edge.decision``) from validation logits and labels.

    Args:
        logits: (N, C) validation logits. labels: (N,) class indices.
        classes: the model's classes. criterion: ``sensitivity=X``, ``specificity=X`` or ``youden``.
        positive: the positive class (None: ``resolve_positive``'s default). source: where the cases came from.
        skipped: validation images that could not be read.
        confidence: of the lower bound a sensitivity or specificity target is met by (``ev.choose_threshold``).
        unsupported: too few cases for the target: the point-estimate threshold, marked unsupported, not an error.

    Raises:
        ExportError: too few cases, or a class absent from the validation split.
        UsageError: too few positives (negatives) for the target at this confidence, without ``unsupported``.
    """
    reason = too_few(labels, classes)
    if reason:
        raise ExportError(f"{source}: {reason}")
    counts = np.bincount(labels, minlength=len(classes))
    fit = ev.fit_temperature_bounded(logits, labels)
    temperature = fit.temperature
    section = {"temperature": temperature, "positive": None, "threshold": None, "criterion": None,
               "calibration": {"method": "temperature scaling: one T minimising the validation NLL within temperature_range",
                               "nll_uncalibrated": ev.nll(logits, labels), "nll_calibrated": fit.nll,
                               "cases": int(len(labels)), "temperature_range": [fit.low, fit.high],
                               "at_bound": fit.at_bound}}
    probs = ev.softmax(logits, temperature)
    validation = {"source": source, "cases": int(len(labels)), "skipped": int(skipped),
                  "per_class": dict(zip(classes, counts.tolist(), strict=True))}
    if len(classes) == 2:
        pos_name, why = resolve_positive(classes, positive)
        pos = classes.index(pos_name)
        y, score = labels == pos, probs[:, pos]
        chosen = choose(y, score, criterion, confidence, unsupported, pos_name)
        threshold = between_scores(chosen["threshold"], score)
        fpr, tpr, thr = ev.roc_curve(y, score)
        section.update(positive=pos_name, positive_source=why, threshold=threshold, criterion=chosen["criterion"],
                       guarantee=chosen["guarantee"])
        figures = ev.binary_figures(y, score, threshold)
        validation.update(auc=ev.auc_ci(y, score), sensitivity=figures["sensitivity"], specificity=figures["specificity"],
                          ppv=figures["ppv"], npv=figures["npv"], brier=ev.brier_score(y, score),
                          ece=ev.reliability(y, score)["ece"],
                          roc={"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                               "thresholds": [None if not np.isfinite(t) else float(t) for t in thr]},
                          score_of=pos_name, scores=score.tolist(), positives=y.astype(int).tolist())
    else:  # no threshold: the score a monitor follows is the calibrated probability of the predicted class
        validation.update(score_of="predicted class", scores=probs.max(axis=1).tolist(), labels=labels.tolist())
    section["validation"] = validation
    sealed = seal(section)
    OperatingPoint.from_manifest({"classes": classes, SECTION: sealed})  # the edge must accept what is written
    return sealed


def choose(y: np.ndarray, score: np.ndarray, criterion: str, confidence: float, unsupported: bool, positive: str) -> dict:
    """``ev.choose_threshold``, its too-few-cases error told in export's options."""
    try:
        return ev.choose_threshold(y, score, ev.parse_criterion(criterion), confidence, unsupported)
    except ev.TooFewCasesError as e:
        cases = "positives" if e.statistic == "sensitivity" else "negatives"
        need = (f"{e.needed} {cases}" if e.needed is not None else "more cases than any split has")
        best = ev.max_supported_target(e.n, confidence)
        raise UsageError(
            f"--operating-point {e.statistic}={e.target:g}: the validation split has {e.n} {cases} ({positive!r} "
            f"is the positive class); a {e.statistic} of {e.target:g} with {confidence:.0%} confidence needs {need}. "
            f"Alternatives: a lower target (at most {best:.3f} with {e.n} {cases}), a lower --confidence, more "
            f"validation cases, or --operating-point-unsupported (the point-estimate threshold, marked "
            f"'unsupported, {e.n} {cases}' in the bundle)") from None


def between_scores(threshold: float, score: np.ndarray) -> float:
    """The threshold moved down to midway between the lowest score called positive and the highest below it.

    The same cases are called positive on the validation split, but no validation score sits on the threshold:
    the edge's engine computes the logits again (cv2.dnn or onnxruntime, about 1e-6 from PyTorch), and a score
    exactly at the threshold could fall either side of it there.
    """
    below = score[score < threshold]
    mid = float((threshold + (below.max() if below.size else 0.0)) / 2)
    return mid if below.size == 0 or mid > below.max() else threshold  # adjacent floats: no midway exists


def summary_line(section: dict) -> str:
    """One line for the export's log."""
    cal = section["calibration"]
    note = ev.temperature_note(cal.get("at_bound"), section["temperature"])
    head = (f"calibration: T = {section['temperature']:.3f}{f' ({note})' if note else ''} (validation NLL "
            f"{cal['nll_uncalibrated']:.4f} -> {cal['nll_calibrated']:.4f}, {cal['cases']} cases)")
    if section["threshold"] is None:
        return head + "; more than two classes: label by argmax"
    v = section["validation"]
    promise = guarantee_text(section["criterion"], section.get("guarantee"), "guarantee" in section)
    return (f"{head}; operating point {section['criterion']} on {section['positive']!r}: threshold "
            f"{section['threshold']:.4f}: {promise} (validation sensitivity {v['sensitivity']['value']:.3f}, "
            f"specificity {v['specificity']['value']:.3f}, AUC {v['auc']['auc']:.3f})")
