"""Validation of a multi-label bundle on a site's labelled cases: per finding, macro and micro, and per subgroup
(``medge validate --labels INDEX.csv`` for a bundle of findings, ``edge.findings``).

Usage:
    from medge.edge.golive.multilabel import evaluate_findings
    report = evaluate_findings(records, model.findings, model.manifest.get("operating_point"), requirements)

Each case record is a prediction record of the bundle (``probabilities`` per finding) with ``targets``: per
finding 1.0 (present), 0.0 (absent) or None (masked: an uncertain label under the index's ``ignore`` policy, or
a finding the index does not label). A masked case is left out of that finding's figures only.

Per finding: the AUC with Newcombe's 95% score interval (``roc.auc_ci``) and, at the finding's own threshold,
sensitivity, specificity, PPV and NPV with Wilson 95% intervals (``proportions.binary_figures``). A finding
without a threshold (unsupported at export) gets its AUC only. Where the export's threshold carries a target
(``sensitivity=0.95`` met by a Clopper-Pearson lower bound, ``edge.golive.thresholds``), the site's cases judge it
by the same kind of bound (``guarantee_at_site``):
  - "confirmed": the site's one-sided lower Clopper-Pearson bound at the export's confidence reaches the target
    (the export's own rule, on the site's cases);
  - "refuted": the one-sided upper Clopper-Pearson bound at 1 - ``REFUTE_ALPHA`` / M is below the target, M the
    findings with a target: a true guarantee (the statistic at or above its target) is called refuted for any of
    the M findings with probability at most ``REFUTE_ALPHA`` (Bonferroni; Clopper-Pearson is exact, so at most);
  - "not shown": neither (too few cases to tell); "no target": a threshold chosen by youden, or none recorded.
A target the export marked unsupported (too few validation cases for its bound) is judged the same way but
listed as "not promised": it never fails the validation.

Macro AUC is the mean of the findings' AUCs (the findings with both classes); micro AUC is the AUC of all the
unmasked (truth, score) pairs of all findings pooled. Neither has an interval: the pairs of one image are not
independent, and the score interval assumes they are.

Subgroups: sex, age band (``AGE_BANDS``), view position (PA, AP, lateral; the index's column, else the DICOM
ViewPosition) and manufacturer (DICOM (0008,0070), from the record's ``input``), each value with its case count
and, per finding, its AUC (with interval) where the group has at least ``validation.MIN_SUBGROUP`` cases and
both classes; a group below that is flagged ``small`` and reports counts only.
Tested by tests/edge/golive/test_multilabel.py and tests/edge/apps/test_validate_multilabel.py."""
from __future__ import annotations

import math

import numpy as np

from medge.edge.golive.proportions import binary_figures
from medge.edge.golive.roc import auc_ci, roc_curve
from medge.edge.golive.thresholds import DEFAULT_CONFIDENCE, clopper_pearson_lower
from medge.edge.golive.validation import MIN_SUBGROUP, Requirement, against_bundle
from medge.edge.numeric import roc_auc

REFUTE_ALPHA = 0.05  # family-wise: the chance that any true guarantee is called refuted at the site
AGE_BANDS = ((0.0, 40.0, "<40"), (40.0, 60.0, "40-59"), (60.0, 80.0, "60-79"), (80.0, math.inf, ">=80"))  # years
LATERAL = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "L"}  # view codes read as "lateral"
GUARANTEE_LISTS = ("confirmed", "refuted", "not shown", "no target", "not promised")  # the report's "guarantees"
AT_THRESHOLD = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


MOSTLY_MISSING = 0.5  # an index whose named files are more than this share missing or not images is warned about


def findings_not_matched(index_names, bundle_names) -> dict:
    """The finding names of the index and of the bundle that do not match (names are matched exactly).

    Args:
        index_names: every finding the index names (``LabelIndex.named``). bundle_names: the bundle's findings.

    Returns:
        {"index_only": the index's names the bundle lacks, "bundle_only": the bundle's findings the index never
        names (each read as absent in every case)}, in their own orders.
    """
    return {"index_only": [n for n in index_names if n not in bundle_names],
            "bundle_only": [n for n in bundle_names if n not in index_names]}


def index_warnings(not_matched: dict, named_files: int, missing: int) -> list[str]:
    """What the summary, the report and stderr say first: finding names that do not match, an index whose files
    are mostly missing.

    Args:
        not_matched: ``findings_not_matched``'s. named_files: the files the index names. missing: how many of
            them are missing or not images.

    Returns:
        one line per warning (empty when all is well).
    """
    out = []
    if not_matched["bundle_only"]:
        out.append(f"the bundle's finding(s) {', '.join(not_matched['bundle_only'])} are named nowhere in the index "
                   "(read as absent in every case)"
                   + (f"; the index names {', '.join(not_matched['index_only'])}, which the bundle lacks: finding "
                      "names are matched exactly, rename them in the index" if not_matched["index_only"] else ""))
    elif not_matched["index_only"]:
        out.append(f"the index names finding(s) {', '.join(not_matched['index_only'])}, which the bundle lacks "
                   "(not validated)")
    if named_files and missing > MOSTLY_MISSING * named_files:
        out.append(f"{missing} of the {named_files} files the index names are missing or not images: is --images "
                   "the folder its paths are under?")
    return out


def age_band(age) -> str:
    """``<40``, ``40-59``, ``60-79``, ``>=80`` (``AGE_BANDS``), or ``unknown``."""
    try:
        a = float(age)
    except (TypeError, ValueError):
        return "unknown"
    for low, high, name in AGE_BANDS:
        if low <= a < high:
            return name
    return "unknown"


def view_group(view) -> str:
    """PA, AP, lateral, another code as given (upper case), or ``unknown``."""
    v = str(view or "").strip().upper()
    if not v:
        return "unknown"
    if v in LATERAL or v.startswith("LAT"):
        return "lateral"
    return v


def sex_group(sex) -> str:
    """M, F, another value as given, or ``unknown``."""
    s = str(sex or "").strip()
    return {"male": "M", "female": "F", "m": "M", "f": "F"}.get(s.lower(), s or "unknown")


SUBGROUPS = {  # report name -> how a case record gives it (the index's columns; DICOM's where the index has none)
    "sex": lambda r: sex_group(r.get("sex")),
    "age_band": lambda r: age_band(r.get("age")),
    "view_position": lambda r: view_group(r.get("view") or (r.get("input") or {}).get("view_position")),
    "manufacturer": lambda r: (r.get("input") or {}).get("manufacturer") or "unknown",
}


def truth_and_scores(records: list[dict], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(Y, P), each (N, K): truth 1.0 / 0.0 / NaN (masked), and each finding's calibrated probability."""
    y = np.array([[np.nan if r["targets"].get(n) is None else float(r["targets"][n]) for n in names] for r in records],
                 np.float64).reshape(len(records), len(names))
    p = np.array([[float(r["probabilities"][n]) for n in names] for r in records], np.float64).reshape(y.shape)
    return y, p


def _site_bounds(successes: int, n: int, confidence: float, refute_confidence: float) -> tuple[float, float]:
    """(lower bound at ``confidence``, upper bound at ``refute_confidence``), one-sided Clopper-Pearson."""
    low = clopper_pearson_lower(successes, n, confidence)
    high = 1.0 - clopper_pearson_lower(n - successes, n, refute_confidence)
    return low, high


def guarantee_at_site(guarantee: dict | None, figures: dict, family: int) -> dict:
    """The export's target judged on the site's cases (module docstring: confirmed, refuted, not shown, no target).

    Args:
        guarantee: the finding's sealed ``guarantee`` (``choose_threshold``'s), or None.
        figures: the finding's ``binary_figures`` on the site's cases.
        family: M, the findings with a target (the Bonferroni divisor of ``REFUTE_ALPHA``).

    Returns:
        {"verdict", "statistic", "target", "promised" (the export's bound reached the target: False for a target
        marked unsupported at export, judged but promising nothing), "estimate", "lower_bound", "upper_bound", "n",
        "rule"}, or {"verdict": "no target", "rule"} where there is none.
    """
    if not isinstance(guarantee, dict) or guarantee.get("target") is None:
        return {"verdict": "no target", "rule": "the threshold carries no target (youden, or none recorded)"}
    stat, target, promised = guarantee["statistic"], float(guarantee["target"]), bool(guarantee.get("supported", True))
    confidence = float(guarantee.get("confidence", DEFAULT_CONFIDENCE))
    f = figures[stat]
    out = {"statistic": stat, "target": target, "promised": promised, "estimate": f["value"], "n": f["n"],
           "rule": (f"confirmed when the one-sided {confidence:.0%} Clopper-Pearson lower bound reaches the target (the "
                    f"export's rule); refuted when the one-sided upper bound at 1 - {REFUTE_ALPHA:g}/{max(family, 1)} "
                    "is below it")}
    if not f["n"]:
        return {**out, "verdict": "not shown", "lower_bound": None, "upper_bound": None}
    low, high = _site_bounds(f["successes"], f["n"], confidence, 1.0 - REFUTE_ALPHA / max(family, 1))
    verdict = "confirmed" if low >= target else "refuted" if high < target else "not shown"
    return {**out, "verdict": verdict, "lower_bound": low, "upper_bound": high}


def finding_figures(name: str, y: np.ndarray, score: np.ndarray, entry: dict, family: int) -> dict:
    """One finding's figures on its unmasked cases (``y`` NaN = masked): counts, AUC, and at its threshold (if any)
    sensitivity, specificity, PPV, NPV, accuracy and the guarantee's verdict.

    Args:
        name: the finding. y, score: its truth (1, 0, NaN) and calibrated probabilities over all cases.
        entry: {"threshold", "criterion", "guarantee" (dict), "guarantee_text", "unsupported", "validation" (the
            finding's validation scores and positives, or None)} of the bundle (``bundle_entries``).
        family: the findings with a target (``guarantee_at_site``).

    Returns:
        {"name", "cases", "positives", "negatives", "masked", "threshold", "criterion", "auc" (None without both
        classes), "supported", "against_bundle" (this site's AUC minus the bundle's validation AUC of the finding,
        ``validation.against_bundle``; None without both), and the figures at the threshold, or "unsupported" (why)
        without one}.
    """
    keep = ~np.isnan(y)
    t, s = y[keep] == 1.0, score[keep]
    out = {"name": name, "cases": int(keep.sum()), "positives": int(t.sum()), "negatives": int((~t).sum()),
           "masked": int((~keep).sum()), "threshold": entry.get("threshold"), "criterion": entry.get("criterion"),
           "guarantee_text": entry.get("guarantee_text"),
           "auc": auc_ci(t, s) if t.any() and (~t).any() else None, "supported": entry.get("threshold") is not None,
           "against_bundle": against_bundle(t, s, {"validation": entry.get("validation")})}
    if not out["supported"]:
        out["unsupported"] = entry.get("unsupported") or "no threshold in the bundle: AUC only"
        return out
    b = binary_figures(t, s, float(entry["threshold"]))
    out.update({k: b[k] for k in AT_THRESHOLD}, confusion=b["confusion"])
    out["guarantee_at_site"] = guarantee_at_site(entry.get("guarantee"), b, family)
    return out


def macro_micro(y: np.ndarray, p: np.ndarray) -> dict:
    """Macro AUC (mean over the findings with both classes) and micro AUC (all unmasked pairs pooled)."""
    aucs = [roc_auc(y[:, k][~np.isnan(y[:, k])] == 1.0, p[:, k][~np.isnan(y[:, k])]) for k in range(y.shape[1])]
    finite = [a for a in aucs if a == a]
    keep = ~np.isnan(y)
    t, s = y[keep] == 1.0, p[keep]
    micro = roc_auc(t, s) if t.any() and (~t).any() else math.nan
    return {"macro_auc": float(np.mean(finite)) if finite else None, "macro_findings": len(finite),
            "micro_auc": micro if micro == micro else None, "micro_pairs": int(keep.sum()),
            "note": "no interval: the findings of one image are not independent pairs"}


def subgroup_figures(records: list[dict], y: np.ndarray, p: np.ndarray, names: list[str]) -> dict:
    """Per attribute of ``SUBGROUPS``, per value: cases, ``small`` (< MIN_SUBGROUP: counts only), and per finding
    its cases, positives and AUC with interval (None where a class is absent)."""
    out = {}
    for attr, key in SUBGROUPS.items():
        values = np.array([str(key(r)) for r in records], dtype=object)
        groups = {}
        for v in sorted(set(values.tolist())):
            mask = values == v
            g = {"cases": int(mask.sum()), "small": bool(mask.sum() < MIN_SUBGROUP), "findings": {}}
            for k, name in enumerate(names):
                yk, keep = y[mask, k], ~np.isnan(y[mask, k])
                t, s = yk[keep] == 1.0, p[mask, k][keep]
                f = {"cases": int(keep.sum()), "positives": int(t.sum())}
                if not g["small"]:
                    f["auc"] = auc_ci(t, s) if t.any() and (~t).any() else None
                g["findings"][name] = f
            if g["small"]:
                g["note"] = f"fewer than {MIN_SUBGROUP} cases: counts only"
            groups[v] = g
        out[attr] = groups
    return out


def bundle_entries(findings_point, section: dict | None) -> list[dict]:
    """Per finding of the bundle: threshold, criterion, guarantee (the sealed dict), its text, unsupported reason."""
    sealed = {e.get("name"): e for e in ((section or {}).get("findings") or []) if isinstance(e, dict)}
    out = []
    for rule in findings_point.findings:
        e = sealed.get(rule.name, {})
        out.append({"threshold": rule.threshold, "criterion": rule.criterion, "guarantee": e.get("guarantee"),
                    "guarantee_text": rule.guarantee, "unsupported": e.get("unsupported"),
                    "validation": e.get("validation")})
    return out


def judge_requirements(requirements: list[Requirement], per_finding: list[dict]) -> list[dict]:
    """Each requirement on each finding (figures at a threshold: supported findings only; AUC: every finding)."""
    verdicts = []
    for req in requirements:
        for f in per_finding:
            if req.metric != "auc" and not f["supported"]:
                continue
            v = req.judge({**{k: f.get(k) for k in AT_THRESHOLD}, "auc": f["auc"]})
            verdicts.append({**v, "finding": f["name"], "requirement": f"{f['name']}: {v['requirement']}"})
    return verdicts


def evaluate_findings(records: list[dict], findings_point, section: dict | None,
                      requirements: list[Requirement] | None = None) -> dict:
    """The multi-label report's figures from classified case records (``probabilities`` and ``targets``).

    Args:
        records: classified case records of the bundle, each with ``targets`` {finding: 1.0, 0.0 or None}, and the
            index's ``sex``, ``age``, ``view`` where known.
        findings_point: the bundle's ``FindingsPoint`` (``Model.findings``).
        section: the manifest's sealed ``operating_point`` section (None: exported without one).
        requirements: ``validation.parse_requirements``'s, judged per finding.

    Returns:
        {"findings": [finding_figures...], "summary": macro_micro, "roc": {finding: {"fpr", "tpr"}}, "subgroups",
        "guarantees": {"confirmed": [...], "refuted": [...], "not shown": [...], "no target": [...]},
        "requirements", "passed": every requirement met and no guarantee refuted}.
    """
    names = findings_point.names
    y, p = truth_and_scores(records, names)
    entries = bundle_entries(findings_point, section)
    family = sum(1 for e in entries if e["threshold"] is not None and isinstance(e["guarantee"], dict)
                 and e["guarantee"].get("target") is not None and e["guarantee"].get("supported", True))
    per = [finding_figures(n, y[:, k], p[:, k], entries[k], family) for k, n in enumerate(names)]
    guarantees: dict[str, list[str]] = {k: [] for k in GUARANTEE_LISTS}
    for f in per:
        if f["supported"]:
            g = f["guarantee_at_site"]
            guarantees[g["verdict"] if g.get("promised", True) else "not promised"].append(f["name"])
    roc = {}
    for k, n in enumerate(names):
        keep = ~np.isnan(y[:, k])
        t = y[keep, k] == 1.0
        fpr, tpr, _ = roc_curve(t, p[keep, k]) if t.any() and (~t).any() else (np.array([]),) * 3
        roc[n] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    verdicts = judge_requirements(requirements or [], per)
    return {"findings": per, "summary": macro_micro(y, p), "roc": roc,
            "subgroups": subgroup_figures(records, y, p, names), "guarantees": guarantees, "requirements": verdicts,
            "passed": all(v["passed"] for v in verdicts) and not guarantees["refuted"]}
