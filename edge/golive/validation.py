"""Local validation before go-live: a bundle on a site's own labelled cases (``medge validate``).

Usage:
    from medge.edge.golive.validation import cases_from_folders, validate
    cases, problems = cases_from_folders("site_cases/", model.classes)
    report = validate(model, cases, problems, require="auc>=0.85,sensitivity>=0.90")

Cases come from class folders (``DIR/<class>/...``, found by content as ``medge
predict`` finds inputs) or from a CSV of ``path,label``. Every input becomes a case
record: classified with its truth, or a problem (unreadable, unlabelled, a label
that is not a class, refused) that is counted and listed, never dropped.

The figures (``edge.golive``), at the bundle's own operating point: AUC with a
95% CI by Newcombe's score method (a lower bound below 1 also for perfectly separated
classes); sensitivity, specificity, PPV and NPV with Wilson 95% CIs; the
confusion matrix, Brier score, ECE and a 10-bin reliability table; the same per
subgroup (DICOM manufacturer, modality, view position, photometric
interpretation, bit depth, image-size band) where a group has at least
``MIN_SUBGROUP`` cases; and the AUC difference with the bundle's own validation
cases (two independent samples). Requirements (``auc>=0.85``) are judged on the
lower bound of the 95% CI: a site's small sample must show the model is good
enough, not merely fail to show that it is not. An AUC requirement fails with
"too few cases" below ``MIN_CASES_PER_CLASS`` of either class, and a bound that
does not exist (NaN) never passes. Brier score and ECE
are reported, never required: they have no interval here to judge.
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medge.edge.decision import default_positive
from medge.edge.errors import UsageError
from medge.edge.golive.calibration import brier_score, reliability
from medge.edge.golive.proportions import binary_figures
from medge.edge.golive.roc import auc_ci, auc_difference, roc_curve
from medge.edge.inputs.scanning import scan_inputs

MIN_SUBGROUP = 20  # cases: below this a group's figures are not reported (its CIs would span most of [0, 1])
SUBGROUPS = {  # report name -> how a record's input section gives it
    "manufacturer": lambda i: i.get("manufacturer") or "unknown",
    "modality": lambda i: i.get("modality") or "none (not DICOM)",
    "view_position": lambda i: i.get("view_position") or "unknown",
    "photometric": lambda i: i.get("photometric") or "unknown",
    "bit_depth": lambda i: f"{i.get('bits')}-bit",
    "size_band": lambda i: size_band(min(int(i.get("width") or 0), int(i.get("height") or 0))),
}
SIZE_BANDS = ((0, 512), (512, 1024), (1024, 2048), (2048, 10**9))  # shorter side, pixels
WITH_CI = ("auc", "sensitivity", "specificity", "ppv", "npv", "accuracy")  # judged on the lower CI bound
NOT_REQUIRABLE = {  # reported, but refused by --require, and why
    m: "it has no confidence interval here, and a point value on a site's sample passes or fails by chance; "
       "read the reliability table in the report instead" for m in ("brier", "ece")}
# An AUC interval rests on the cases of each class: with fewer than 10 of one, its normal approximation is too
# unsteady to certify a model (2 + 2 separated cases give a lower bound of 0.386, DeLong's se 0).
MIN_CASES_PER_CLASS = 10
REQUIREMENT = re.compile(r"^\s*([a-z_]+)\s*([<>=!]*)\s*(.*?)\s*$")
NUMBER = re.compile(r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")


def size_band(short_side: int) -> str:
    for low, high in SIZE_BANDS:
        if low <= short_side < high:
            return f"shorter side {low}-{high - 1} px" if high < 10**9 else f"shorter side >= {low} px"
    return "unknown"


@dataclass(frozen=True)
class Case:
    """One input of a validation run: a file and its true class."""

    path: str
    truth: str


@dataclass(frozen=True)
class Problem:
    """An input that is not a usable case, and why (``kind``: unlabelled, unreadable, unknown label, refused)."""

    path: str
    kind: str
    reason: str


@dataclass(frozen=True)
class Requirement:
    """``metric >= target``, judged on the lower 95% CI bound of a figure of ``WITH_CI``."""

    metric: str
    op: str  # ">=" (the only operator: every requirable figure is larger-is-better)
    target: float

    def judge(self, figures: dict) -> dict:
        """The verdict on ``figures``: passed only when the lower 95% CI bound exists and reaches the target; for the
        AUC, also only with ``MIN_CASES_PER_CLASS`` cases of each class. ``reason`` says why it failed (else None)."""
        f = figures.get(self.metric)
        low = f.get("low") if isinstance(f, dict) else None
        point = f.get("value", f.get("auc")) if isinstance(f, dict) else None
        verdict = {"requirement": f"{self.metric}{self.op}{self.target:g}", "judged_on": "lower 95% CI bound",
                   "judged_value": low, "value": point, "passed": False, "reason": None}
        if self.metric == "auc" and (f is None or min(f["n_positive"], f["n_negative"]) < MIN_CASES_PER_CLASS):
            counts = "a class is absent" if f is None else f"{f['n_positive']} positive, {f['n_negative']} negative"
            verdict["reason"] = f"too few cases ({counts}; at least {MIN_CASES_PER_CLASS} of each)"
        elif f is None:
            verdict["reason"] = "no figure (no case to compute it on)"
        elif low is None or math.isnan(low):
            verdict["reason"] = f"no lower bound ({f.get('note') or 'undefined on these cases'})"
        elif low < self.target:
            verdict["reason"] = f"lower 95% CI bound {low:.3f} < {self.target:g}"
        else:
            verdict["passed"] = True
        return verdict


def parse_requirements(text: str | None) -> list[Requirement]:
    """``"auc>=0.85,sensitivity>=0.90"`` -> Requirements.

    Raises:
        UsageError: naming the part that is wrong: not METRIC>=NUMBER, a number that is not one (``0.9.1``, ``.``),
            a metric unknown or not requirable (brier, ece: ``NOT_REQUIRABLE`` says why), ``<=``, a target outside [0, 1].
    """
    if not text:
        return []
    out = []
    for part in text.split(","):
        m = REQUIREMENT.match(part.lower())
        metric, op, number = m.groups() if m else (None, None, None)
        if not m or not metric or op not in (">=", "<=") or not number:
            raise UsageError(f"--require: cannot read {part.strip()!r}: write METRIC>=VALUE, comma-separated "
                             f"(metrics: {', '.join(WITH_CI)})")
        if metric in NOT_REQUIRABLE:
            raise UsageError(f"--require: {part.strip()!r}: {metric} cannot be required: {NOT_REQUIRABLE[metric]}")
        if metric not in WITH_CI:
            raise UsageError(f"--require: unknown metric {metric!r} in {part.strip()!r} (metrics: {', '.join(WITH_CI)})")
        if op != ">=":
            raise UsageError(f"--require: {part.strip()!r}: {metric} takes >= (larger is better)")
        if not NUMBER.match(number):
            raise UsageError(f"--require: {part.strip()!r}: {number!r} is not a number (write e.g. {metric}>=0.85)")
        target = float(number)
        if not 0 <= target <= 1:
            raise UsageError(f"--require: {metric} target {target:g} is not in [0, 1]")
        out.append(Requirement(metric, op, target))
    return out


def ci_text(f: dict | None, digits: int = 3, to: str = " to ") -> str:
    """``0.912 (0.871 to 0.953)`` for a figure with a CI; ``n/a (a class is absent: no AUC)`` where it has no
    interval (its ``note``); ``n/a`` for no figure. The one way reports write a figure with its CI."""
    if not f:
        return "n/a"
    value = f.get("value", f.get("auc", f.get("difference")))
    number = (lambda v: "n/a" if v is None or v != v else f"{v:.{digits}f}")
    if f.get("note"):
        return f"{number(value)} ({f['note']})"
    return f"{number(value)} ({number(f['low'])}{to}{number(f['high'])})"


def cases_from_folders(root: str | os.PathLike, classes: list[str]) -> tuple[list[Case], list[Problem]]:
    """Cases of ``root/<class>/...`` (searched by content, recursively); files elsewhere are unlabelled problems.

    Raises:
        UsageError: ``root`` is not a folder, or no sub-folder is named after a class.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder (give the folder of class folders, or --labels CSV)")
    names = {p.name for p in root.iterdir() if p.is_dir()}
    if not names & set(classes):
        raise UsageError(f"{root}: no folder named after a class of the model ({', '.join(classes)}); found "
                         f"{sorted(names)[:8] or 'none'}: give DIR/<class>/ folders, or --labels CSV")
    scan = scan_inputs([str(root)])
    cases, problems = [], [Problem(p, "not an image", r) for p, r in scan.skipped]
    for entry in scan.entries:
        rel = Path(entry.path).relative_to(root)
        top = rel.parts[0] if len(rel.parts) > 1 else None
        if entry.error:
            problems.append(Problem(entry.path, "unreadable", entry.error))
        elif top not in classes:
            where = f"folder {top!r} is not a class of the model" if top else "not in a class folder"
            problems.append(Problem(entry.path, "unlabelled", f"{where} ({', '.join(classes)})"))
        else:
            cases.append(Case(entry.path, top))
    return cases, problems


def cases_from_csv(csv_path: str | os.PathLike, classes: list[str], root: str | os.PathLike | None = None
                   ) -> tuple[list[Case], list[Problem]]:
    """Cases of a CSV with a header ``path,label`` (relative paths from ``root``, default the CSV's folder).

    Raises:
        UsageError: no such file, not a CSV with path and label columns, or a path listed twice.
    """
    csv_path = Path(csv_path)
    base = Path(root) if root is not None else csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise UsageError(f"{csv_path}: labels file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{csv_path}: cannot read the labels CSV: {e}") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise UsageError(f"{csv_path}: needs a header row with columns path,label (found {list(rows[0]) if rows else 'no rows'})")
    cases, problems, seen = [], [], set()
    lower = {c.lower(): c for c in classes}
    for n, row in enumerate(rows, start=2):
        raw, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not raw:
            problems.append(Problem(f"{csv_path}:{n}", "unlabelled", "empty path"))
            continue
        path = str(Path(raw) if Path(raw).is_absolute() else base / raw)
        if path in seen:
            raise UsageError(f"{csv_path}: line {n}: {raw} is listed twice")
        seen.add(path)
        if label.lower() not in lower:
            problems.append(Problem(path, "unknown label", f"label {label!r} (line {n}) is not a class of the model "
                                                           f"({', '.join(classes)})"))
        else:
            cases.append(Case(path, lower[label.lower()]))
    return cases, problems


def figures(y: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """The headline figures of one set of cases (``y`` True = positive, ``score`` its calibrated probability)."""
    both = bool(y.any() and (~y).any())
    out = binary_figures(y, score, threshold)
    out.update(auc=auc_ci(y, score) if both else None, brier=brier_score(y, score),
               reliability=reliability(y, score))
    out["ece"] = out["reliability"]["ece"]
    return out


def subgroup_figures(records: list[dict], y: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """Per attribute of ``SUBGROUPS``, per value: the case count, and ``figures`` when it has MIN_SUBGROUP cases."""
    out = {}
    for name, key in SUBGROUPS.items():
        values = np.array([key(r.get("input") or {}) for r in records], dtype=object)
        groups = {}
        for v in sorted(set(values.tolist())):
            mask = values == v
            g = {"cases": int(mask.sum()), "positives": int(y[mask].sum())}
            if mask.sum() >= MIN_SUBGROUP:
                f = figures(y[mask], score[mask], threshold)
                g.update({k: f[k] for k in ("auc", "sensitivity", "specificity", "ppv", "npv", "accuracy", "brier", "ece")})
            else:
                g["note"] = f"fewer than {MIN_SUBGROUP} cases: figures not reported"
            groups[v] = g
        out[name] = groups
    return out


def against_bundle(y: np.ndarray, score: np.ndarray, op_section: dict | None) -> dict | None:
    """This site's AUC minus the bundle's validation AUC, with the CI (two independent sets), when both have both classes."""
    v = (op_section or {}).get("validation") or {}
    if "positives" not in v or not (y.any() and (~y).any()):
        return None
    ref_y = np.asarray(v["positives"], bool)
    return {**auc_difference(y, score, ref_y, np.asarray(v["scores"], np.float64)),
            "bundle_cases": int(len(ref_y)), "bundle_source": v.get("source")}


@dataclass(frozen=True)
class Decision:
    """What the figures are judged at: the positive class, its threshold and where they come from."""

    positive: str
    positive_index: int
    threshold: float
    source: str  # "bundle operating point (sensitivity=0.95)" / "argmax (no operating point in the bundle)"
    calibrated: bool
    guarantee: str = "no threshold (label by argmax)"  # what the export promised (edge.decision.guarantee_text)


def decision_of(model, positive: str | None = None) -> Decision:
    """The bundle's operating point, or argmax (threshold 0.5 on the positive class: the same labels for two classes).

    Raises:
        UsageError: not a two-class bundle, or ``positive`` that is not a class / differs from the bundle's.
    """
    classes = list(model.classes)
    if len(classes) != 2:
        raise UsageError(f"medge validate reports two-class models; this bundle has {len(classes)} classes ({classes})")
    op = model.operating_point
    if op is not None and op.threshold is not None:
        if positive not in (None, op.positive):
            raise UsageError(f"--positive {positive!r}: the bundle's operating point is on {op.positive!r}")
        source = (f"the {model.variant} variant's own operating point ({op.criterion}), chosen at export by the "
                  "bundle's rule" if getattr(model, "own_operating_point", False) else f"bundle operating point ({op.criterion})")
        return Decision(op.positive, op.positive_index, op.threshold, source, True, op.guarantee)
    if positive is None:
        positive = default_positive(classes)[0]
    if positive not in classes:
        raise UsageError(f"--positive {positive!r} is not a class of the model ({classes})")
    return Decision(positive, classes.index(positive), 0.5, "argmax (no operating point in the bundle)", op is not None)


def score_and_truth(records: list[dict], decision: Decision) -> tuple[np.ndarray, np.ndarray]:
    """(y, score) of classified case records: truth == positive, and the positive class's probability."""
    y = np.array([r["truth"] == decision.positive for r in records], bool)
    score = np.array([r["probabilities"][decision.positive] for r in records], np.float64)
    return y, score


def evaluate_records(records: list[dict], decision: Decision, op_section: dict | None, requirements: list[Requirement]
                     ) -> dict:
    """The report's figures from classified case records (each with ``truth`` and ``probabilities``)."""
    y, score = score_and_truth(records, decision)
    overall = figures(y, score, decision.threshold)
    fpr, tpr, thr = roc_curve(y, score) if y.any() and (~y).any() else (np.array([]),) * 3
    verdicts = [r.judge(overall) for r in requirements]
    return {"figures": overall, "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                                        "thresholds": [None if not np.isfinite(t) else float(t) for t in thr]},
            "subgroups": subgroup_figures(records, y, score, decision.threshold),
            "against_bundle": against_bundle(y, score, op_section), "requirements": verdicts,
            "passed": all(v["passed"] for v in verdicts)}
