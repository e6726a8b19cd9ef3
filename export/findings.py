"""Per-finding calibration and thresholds of a multi-label model, chosen at export on the validation split.

A multi-label model gives one logit z_k per finding (``edge.findings``). For each finding, on the validation
cases whose label is known (an uncertain label masked by ``--uncertain ignore`` is left out of that finding only):

- a temperature T_k by the same bounded NLL fit as single-label (``edge.golive.fit_temperature_bounded``): a
  sigmoid of z is the softmax of the two logits [0, z], so the fit runs on those stacked logits;
- a threshold on sigmoid(z / T_k) by the same criterion and confidence as the single-label operating point
  (``edge.golive.choose_threshold``), moved midway between validation scores (``calibrate.between_scores``);
- a finding with fewer than ``MIN_PER_CLASS`` validation positives or negatives gets no threshold (null) and the
  reason (``unsupported``), as torchxrayvision marks such a finding NaN: the edge decides nothing for it;
- a finding with enough cases for a threshold but too few for the target at that confidence gets the
  point-estimate threshold, marked ``guarantee.supported`` false. This is automatic per finding (single-label
  exits 2 without ``--operating-point-unsupported``): with 14 findings one rare finding must not stop the export.

The section also holds the validation figures a site is compared with (``medge validate``, ``medge monitor``):
per finding the AUC with its interval, sensitivity and specificity at the threshold, Brier score, ECE, the ROC and
the scores with their truth (``scores``, ``positives``: the known cases), and ``all_scores``, the calibrated
probability of every validation image, masked ones included (the reference a site's images drift from); for the
whole model the macro AUC (mean over findings with an AUC) and the micro AUC
(every known (case, finding) pair pooled, on the calibrated probabilities).
Tested by tests/export/test_findings.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medge.edge import golive as ev
from medge.edge.decision import SECTION, seal
from medge.edge.errors import DataError, ExportError, UsageError
from medge.edge.findings import MULTILABEL, FindingsPoint
from medge.edge.numeric import sigmoid
from medge.export.calibrate import MIN_PER_CLASS, between_scores

CALIBRATION_METHOD = ("temperature scaling per finding: one T_k minimising the validation binary NLL of "
                      "sigmoid(z_k / T_k) within temperature_range")


def _json_number(x) -> float | None:
    """A float for the manifest, None for NaN or infinity (JSON has neither)."""
    return float(x) if x is not None and math.isfinite(x) else None


def _clean(figures: dict) -> dict:
    """A figures dict with its NaNs as None."""
    return {k: _json_number(v) if isinstance(v, float) else v for k, v in figures.items()}


def unsupported_reason(positives: int, negatives: int) -> str | None:
    """Why a finding's validation cases cannot give it a threshold, or None."""
    if positives >= MIN_PER_CLASS and negatives >= MIN_PER_CLASS:
        return None
    return (f"{positives} positives and {negatives} negatives in the validation split: a threshold needs at least "
            f"{MIN_PER_CLASS} of each")


def binary_temperature(z: np.ndarray, y: np.ndarray) -> ev.TemperatureFit:
    """The bounded temperature fit of sigmoid(z / T) to truth ``y``: the softmax fit on the logits [0, z]."""
    return ev.fit_temperature_bounded(np.stack([np.zeros_like(z), z], axis=1), y.astype(np.int64))


def finding_figures(y: np.ndarray, score: np.ndarray, threshold: float | None) -> dict:
    """One finding's validation figures on its known cases (``score``: calibrated probabilities)."""
    both = bool(y.any() and not y.all())
    figures = {"cases": int(y.size), "n_positive": int(y.sum()), "n_negative": int((~y).sum()),
               "auc": _clean(ev.auc_ci(y, score)) if both else None,
               "brier": _json_number(ev.brier_score(y, score)) if y.size else None,
               "ece": _json_number(ev.reliability(y, score)["ece"]) if y.size else None,
               "score_of": "calibrated probability", "scores": score.tolist(), "positives": y.astype(int).tolist()}
    if threshold is not None:
        binary = ev.binary_figures(y, score, threshold)
        figures.update({k: _clean(binary[k]) for k in ("sensitivity", "specificity", "ppv", "npv")})
    if both:
        fpr, tpr, thr = ev.roc_curve(y, score)
        figures["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": [_json_number(t) for t in thr]}
    return figures


def finding_entry(name: str, z: np.ndarray, y: np.ndarray, criterion: str, confidence: float) -> dict:
    """One finding of the section from its known validation cases.

    Args:
        name: the finding. z: (n,) its logits. y: (n,) bool truth (masked cases already left out).
        criterion: ``sensitivity=X``, ``specificity=X`` or ``youden``. confidence: of the lower bound.

    Returns:
        {"name", "temperature", "threshold" (None: unsupported), "criterion", "guarantee" or "unsupported",
        "calibration", "validation"} (``edge.findings``'s contract).
    """
    positives, negatives = int(y.sum()), int((~y).sum())
    reason = unsupported_reason(positives, negatives)
    entry = {"name": name, "temperature": 1.0, "threshold": None, "criterion": None}
    if reason is not None:
        entry.update(unsupported=reason, calibration={"method": "none: too few cases (temperature 1)", "cases": int(y.size),
                                                      "nll_uncalibrated": None, "nll_calibrated": None, "at_bound": None})
        entry["validation"] = finding_figures(y, sigmoid(z), None)
        return entry
    fit = binary_temperature(z, y)
    stacked = np.stack([np.zeros_like(z), z], axis=1)
    score = sigmoid(z / fit.temperature)  # what the edge computes (edge.findings.FindingsPoint.probabilities)
    chosen = ev.choose_threshold(y, score, ev.parse_criterion(criterion), confidence, unsupported=True)
    threshold = between_scores(chosen["threshold"], score)
    entry.update(temperature=fit.temperature, threshold=threshold, criterion=chosen["criterion"],
                 guarantee=chosen["guarantee"],
                 calibration={"method": CALIBRATION_METHOD, "cases": int(y.size),
                              "nll_uncalibrated": ev.nll(stacked, y.astype(np.int64)), "nll_calibrated": fit.nll,
                              "temperature_range": [fit.low, fit.high], "at_bound": fit.at_bound})
    entry["validation"] = finding_figures(y, score, threshold)
    return entry


def _check_arrays(logits, targets, findings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    z, t = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    if z.ndim != 2 or z.shape != t.shape or z.shape[1] != len(findings):
        raise UsageError(f"findings_section: logits {z.shape} and targets {t.shape} must both be (N, {len(findings)})")
    if not np.isfinite(z).all():
        raise ExportError("validation logits hold NaN or infinite values: the model is broken")
    known = t[~np.isnan(t)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise UsageError("findings_section: targets must be 1, 0 or NaN (masked)")
    return z, t


def pooled_auc(entries: list[dict], z_scores: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Macro AUC (mean over findings with an AUC) and micro AUC (every known (case, finding) pair pooled)."""
    aucs = [e["validation"]["auc"]["auc"] for e in entries if e["validation"]["auc"] is not None]
    y = np.concatenate([yk for yk, _ in z_scores]) if z_scores else np.zeros(0, bool)
    s = np.concatenate([sk for _, sk in z_scores]) if z_scores else np.zeros(0)
    micro = ev.auc_ci(y, s) if y.any() and not y.all() else None
    return {"macro_auc": {"auc": float(np.mean(aucs)) if aucs else None, "findings": len(aucs),
                          "of": "mean of the per-finding AUCs (findings with both classes in the split)"},
            "micro_auc": None if micro is None else {**_clean(micro), "pairs": int(y.size),
                                                     "of": "all known (case, finding) pairs pooled, calibrated probabilities"}}


def findings_section(logits, targets, findings: list[str], criterion: str, source: str,
                     confidence: float = ev.DEFAULT_CONFIDENCE, skipped: int = 0, notes=()) -> dict:
    """The sealed multi-label ``operating_point`` manifest section (``edge.findings``) from validation logits.

    Args:
        logits: (N, K) validation logits, one column per finding. targets: (N, K) 1, 0 or NaN (masked: left out).
        findings: the K finding names, in the order of the logits. criterion: as single-label's ``--operating-point``.
        source: where the cases came from. confidence: of the lower bound a target is met by.
        skipped: validation images that could not be read. notes: warnings about the cases, kept in the section's
            validation (``notes``; absent without any).

    Returns:
        the sealed section, accepted by ``FindingsPoint.from_manifest``.

    Raises:
        UsageError: arrays of the wrong shape or targets other than 1/0/NaN. ExportError: non-finite logits.
    """
    z, t = _check_arrays(logits, targets, findings)
    entries, pooled = [], []
    for k, name in enumerate(findings):
        known = ~np.isnan(t[:, k])
        y = t[known, k] == 1.0
        entry = finding_entry(name, z[known, k], y, criterion, confidence)
        entry["validation"]["masked"] = int((~known).sum())
        # every validation image's calibrated probability, masked ones too: the drift reference of a site's images
        entry["validation"]["all_scores"] = sigmoid(z[:, k] / entry["temperature"]).tolist()
        entries.append(entry)
        pooled.append((y, np.asarray(entry["validation"]["scores"], np.float64)))
    validation = {"source": source, "cases": int(z.shape[0]), "skipped": int(skipped),
                  "per_finding": {e["name"]: e["validation"]["n_positive"] for e in entries}, **pooled_auc(entries, pooled)}
    if notes:
        validation["notes"] = list(notes)
    sealed = seal({"task": MULTILABEL, "findings": entries, "validation": validation})
    FindingsPoint.from_manifest({"task": MULTILABEL, "classes": list(findings), SECTION: sealed})  # the edge accepts it
    return sealed


def summary_lines(section: dict) -> list[str]:
    """The export log's lines: one per finding (temperature, threshold, guarantee, AUC), then macro and micro AUC."""
    point = FindingsPoint.from_manifest({"task": MULTILABEL, "classes": [e["name"] for e in section["findings"]],
                                         SECTION: section})
    lines = []
    for rule, e in zip(point.findings, section["findings"], strict=True):
        v, auc = e["validation"], (e["validation"]["auc"] or {}).get("auc")
        note = ev.temperature_note(e["calibration"].get("at_bound"), rule.temperature)
        masked = f" ({v['masked']} masked)" if v.get("masked") else ""
        head = (f"finding {rule.name!r}: {v['n_positive']} positives / {v['cases']} cases{masked}, "
                f"T = {rule.temperature:.3f}" + (f" ({note})" if note else ""))
        decided = ("no threshold (" + rule.guarantee + ")" if rule.threshold is None
                   else f"threshold {rule.threshold:.4f}: {rule.guarantee}")
        lines.append(f"{head}; {decided}; AUC {'n/a' if auc is None else f'{auc:.3f}'}")
    val = section["validation"]
    macro, micro = val["macro_auc"]["auc"], (val["micro_auc"] or {}).get("auc")
    lines.append(f"findings: macro AUC {'n/a' if macro is None else f'{macro:.3f}'} over {val['macro_auc']['findings']} "
                 f"findings, micro AUC {'n/a' if micro is None else f'{micro:.3f}'} ({val['cases']} validation images)")
    return lines


@dataclass(frozen=True)
class IndexArgs:
    """The index export was given for a multi-label model's validation cases (``--labels``, ``--images``,
    ``--labels-format``, ``--uncertain``); unset fields: the checkpoint's own."""

    labels: str | None = None  # an index CSV (edge.inputs.index)
    images: str | None = None  # the folder its paths are under (default: the index's folder)
    labels_format: str | None = None  # nih, chexpert or generic
    uncertain: str | None = None  # ignore, zeros or ones


@dataclass(frozen=True)
class IndexSource:
    """Where a multi-label model's validation cases come from: an index and how it is split by patient
    (``train.data.discover_index``), as the run split it unless export was given another index."""

    labels: str
    images: str | None
    labels_format: str
    uncertain: str
    val_fraction: float
    test_fraction: float
    seed: int
    given: bool  # True: given to export; False: the run's own index and split
    recorded: dict = field(default_factory=dict)  # the checkpoint's data_source (index_sha256, split_sha256)
    named: bool = False  # the run's own index, named by --labels (split as in training all the same)

    def describe(self, whole: bool = False) -> str:
        """Where the validation cases come from, for the log and the manifest (``whole``: a given index without a
        split column, used whole)."""
        if whole:
            return (f"every row of {self.labels} ({self.labels_format}, uncertain {self.uncertain}; the index given, "
                    f"without a split column: all validation cases)")
        if self.given:
            return (f"val split of {self.labels} ({self.labels_format}, uncertain {self.uncertain}; the index given: "
                    f"its split column's val rows)")
        named = ", given with --labels" if self.named else ""
        return (f"val split of {self.labels} ({self.labels_format}, uncertain {self.uncertain}; the run's own index"
                f"{named}, split again as in training: seed {self.seed}, val {self.val_fraction:g}, test "
                f"{self.test_fraction:g}, by patient)")


def index_of_data(data: str) -> IndexArgs:
    """``--data`` for a multi-label model: an index CSV, or a folder holding exactly one (its images under it).

    Raises:
        UsageError: a folder with no CSV or several.
    """
    path = Path(data)
    if path.is_file():
        return IndexArgs(labels=str(path))
    if not path.exists():
        raise UsageError(f"--data {data}: not found (a multi-label model is validated on an index: a CSV, or a folder "
                         "holding exactly one)")
    found = sorted(path.glob("*.csv")) if path.is_dir() else []
    if len(found) != 1:
        names = f": {', '.join(f.name for f in found[:5])}" if found else ""
        raise UsageError(f"--data {data}: a multi-label model is validated on an index: give the index CSV itself, or "
                         f"a folder holding exactly one (found {len(found)}{names})")
    return IndexArgs(labels=str(found[0]), images=str(path))


def is_run_index(labels: str, own: str | None, index_sha256: str | None) -> bool:
    """Whether the index ``labels`` is the run's own: the same file as ``own``, or the same bytes as the index the
    checkpoint recorded (``index_sha256``: a copy or a moved index)."""
    from medge.train.checkpoint import file_sha256

    if own is not None and Path(labels).resolve() == Path(own).resolve():
        return True
    return bool(index_sha256) and Path(labels).is_file() and file_sha256(labels) == index_sha256


def index_source(train_config: dict, given: IndexArgs | None, data_source: dict | None = None) -> IndexSource | None:
    """The index to validate on: the one given to export, else the run's own (``train_config``'s labels); None if
    neither (a multi-label checkpoint made outside ``medge train --labels``).

    Args:
        train_config: the checkpoint's. given: what export was given (None: nothing).
        data_source: the checkpoint's ``data_source`` (its recorded hashes), None for an older or index-less one.

    Returns:
        the IndexSource. The run's own index given with ``--labels`` (same file, or same bytes as recorded) is
        split exactly as in training, never used whole: its rows are mostly training patients.
    """
    own = train_config.get("labels") or None
    g = given or IndexArgs()
    if g.labels is None and own is None:
        return None
    recorded = dict(data_source or {})
    run_s = g.labels is None or is_run_index(g.labels, own, recorded.get("index_sha256"))
    labels = g.labels or own
    if run_s:  # read exactly as training read it; the images under --images, else the run's, else the index's folder
        fmt, uncertain = train_config.get("labels_format") or "generic", train_config.get("uncertain") or "ignore"
        images = g.images or train_config.get("images") or str(Path(labels).parent)
    else:  # the split does not depend on the images folder (discover_index splits every row, found or not)
        fmt, uncertain = g.labels_format or "generic", g.uncertain or train_config.get("uncertain") or "ignore"
        images = g.images or str(Path(labels).parent)
    return IndexSource(labels, images, fmt, uncertain, float(train_config.get("val_fraction", 0.2)),
                       float(train_config.get("test_fraction", 0.1)), int(train_config.get("seed", 0)),
                       given=not run_s, recorded=recorded, named=run_s and g.labels is not None)


def _check_own_index(src: IndexSource) -> None:
    """DataError saying what to give when the run's own index or its images are no longer where training read them."""
    if src.given:
        return
    if not Path(src.labels).is_file():
        raise DataError(f"{src.labels}: the run's index not found (the data has moved?): put it back there, or give "
                        "--labels INDEX.csv --images DIR (an index given to export is all validation cases unless it "
                        "has a split column: the run's own index given so would mix its training patients in)")
    if not Path(src.images).is_dir():
        raise DataError(f"{src.images}: images folder not found (for the run's index {src.labels}; the data has "
                        "moved?): give --images DIR, where its images are now (the run's index is split again as in "
                        "training), or --labels INDEX.csv --images DIR to calibrate on another index")


@dataclass(frozen=True)
class ValidationCases:
    """A multi-label model's validation cases: the split, where it came from (the manifest's validation source) and
    the notes the manifest keeps about it (a calibration index sharing patients with training)."""

    split: object  # a train.data.Split
    source: str
    notes: tuple[str, ...] = ()
    train: object | None = None  # the training split's images (int8's calibration, export.variants); None: unknown
    train_source: str = ""  # where ``train`` came from


def check_membership(src: IndexSource, split, missing: int, log) -> None:
    """ExportError when the run's own index, split again, does not give the validation images training held out
    (its recorded ``split_sha256``); a note for an older checkpoint that recorded none.

    Raises:
        ExportError: what changed (the index's bytes, or the images found today), and the way out.
    """
    from medge.train.checkpoint import file_sha256, membership_sha256

    expected = (src.recorded.get("split_sha256") or {}).get("val")
    if expected is None:
        log("note: this checkpoint records no hash of its validation split (written before they were recorded): the "
            "split rebuilt from its index is not checked against training's")
        return
    if membership_sha256(split.paths, src.images) == expected:
        return
    if src.recorded.get("index_sha256") and file_sha256(src.labels) != src.recorded["index_sha256"]:
        why = "the index file has changed since training (its SHA-256 differs from the one the checkpoint records)"
    else:
        why = (f"the index is unchanged, but {missing} of its images are missing or not images now, and an image "
               "whose patient is read from its DICOM header becomes its own patient without it: patients move "
               "between splits")
    raise ExportError(f"{src.labels}: the validation split rebuilt from the run's index is not the one training held "
                      f"out ({why}); calibrating on it would use training images. Restore the index and images as "
                      "they were in training, or give a separate validation index of patients the run did not train "
                      "on with --labels INDEX.csv --images DIR")


def training_overlap(src: IndexSource, split, train_patients, log) -> tuple[str, ...]:
    """A warning (logged, and kept for the manifest) when an index given to export shares patients with the run's
    training split (``train_patients``, from the run folder; None: unknown)."""
    if not src.given or not train_patients:
        return ()
    mine = {p for p in getattr(split, "patients", None) or [] if p is not None}
    shared = sorted(mine & set(train_patients))
    if not shared:
        return ()
    note = (f"{len(shared)} of the {len(mine)} patients of {src.labels} are training patients of this run (e.g. "
            f"{', '.join(shared[:3])}): their images were seen in training, so the thresholds and validation "
            "figures are optimistic; calibrate on patients the run did not train on")
    log(f"warning: {note}")
    return (note,)


def run_train_patients(checkpoint_path) -> list | None:
    """The run's training patients, from ``data_report.json`` next to the checkpoint (``medge train`` writes them
    for an index run); None where there is none or it names none."""
    import json

    report = Path(checkpoint_path).parent / "data_report.json"
    try:
        return json.loads(report.read_text()).get("train_patients")
    except (OSError, ValueError, AttributeError):
        return None


def validation_split(src: IndexSource, findings: list[str], log, train_patients=None) -> ValidationCases:
    """The validation cases of ``src``, its findings checked against the model's.

    The run's own index is split again exactly as in training (``train.data.discover_index``: its val split), and
    that split must be the one training recorded (``check_membership``). An index given to export is all
    validation cases, unless it has a split column: then its ``val`` rows; a warning when it shares patients with
    the run's training split.

    Args:
        src: ``index_source``'s. findings: the model's finding names, in its order. log: where the lines go.
        train_patients: the run's training patients (``run_train_patients``), None where unknown.

    Returns:
        the ValidationCases (the ``train.data.Split``: paths, one tuple of K targets per image, patients; its
        source; notes; the training split where known: the run's own, or a given index's ``train`` rows).

    Raises:
        DataError: the index cannot be read; ExportError: its findings are not the model's, its split column
            names no val row, or the run's index no longer gives training's validation split.
    """
    from medge.edge.inputs.index import read_index
    from medge.train.data import Split, discover_index

    _check_own_index(src)
    # the run's own index is read exactly as training read it, so that the split is the run's; another index is
    # read for the model's findings, in its order
    index = read_index(src.labels, src.images, src.labels_format, src.uncertain, findings if src.given else None)
    note = index.missing_summary()
    if note:
        log(f"note: {note}")
    whole = src.given and not any(e.split for e in (index.rows or index.entries))
    if not src.given:
        found, splits = discover_index(index, src.val_fraction, src.test_fraction, src.seed)
        split, train = splits["val"], splits["train"]
    else:
        found = index.findings

        def rows(keep) -> Split:
            mine = [e for e in index.entries if keep(e)]
            return Split([e.file for e in mine], [tuple(e.targets) for e in mine], patients=[e.patient for e in mine],
                         findings=tuple(index.findings))

        split = rows(lambda e: whole or e.split == "val")
        train = None if whole else rows(lambda e: e.split == "train")
        if not len(split) and index.missing:
            raise ExportError(f"{note}: no validation image was found under {src.images} (give --images DIR, where "
                              "the index's paths are)")
        if not len(split) and not whole:
            raise ExportError(f"{src.labels}: its split column names no usable val row (an index given is all "
                              "validation cases only without a split column)")
    if list(found) != list(findings):
        raise ExportError(f"{src.labels}: findings {list(found)} differ from the checkpoint's {list(findings)}")
    if not src.given:
        check_membership(src, split, len(index.missing), log)
    patients = len({p for p in getattr(split, "patients", None) or [] if p is not None})
    log(f"validation: {len(split)} images of {patients or 'unknown'} patients, {src.describe(whole)}")
    train_source = (f"train rows of {src.labels} (its split column)" if src.given else
                    f"train split of {src.labels} (the run's own index, split again as in training)")
    return ValidationCases(split, src.describe(whole), training_overlap(src, split, train_patients, log),
                           train if train is not None and len(train) else None, train_source)


def operating_point(model, ck, cases: ValidationCases | None, src: IndexSource | None, cfg, log) -> dict | None:
    """The sealed multi-label section on the validation split (``findings_section``); None without one.

    Args:
        model: the trained module. ck: its checkpoint. cases: ``validation_split``'s, or None.
        src: where the split came from. cfg: the ``ExportConfig`` (operating_point, confidence, calibration_images).
        log: where the lines go (one per finding).
    """
    from medge.export.calibrate import split_logits

    if cfg.operating_point == "none":
        log("operating point: none (--operating-point none): each finding decided at 0.5 on the uncalibrated sigmoid")
        return None
    if cases is None:
        log("note: no validation index (the checkpoint names none; give --labels INDEX.csv): no calibration and no "
            "thresholds: each finding decided at 0.5 on the uncalibrated sigmoid")
        return None
    logits, targets, skipped = split_logits(model, cases.split, ck.preprocess, cfg.calibration_images, log, src.labels)
    section = findings_section(logits, np.asarray(targets, np.float64), ck.classes, cfg.operating_point,
                               cases.source, cfg.confidence, skipped, notes=cases.notes)
    for line in summary_lines(section):
        log(line)
    short = [e["name"] for e in section["findings"] if (e.get("guarantee") or {}).get("supported") is False]
    if short:
        log(f"note: {', '.join(short)}: too few validation cases for {cfg.operating_point} at {cfg.confidence:.0%} "
            "confidence: the point-estimate threshold, marked unsupported (decided per finding: a rare finding does "
            "not stop a multi-label export)")
    return section
