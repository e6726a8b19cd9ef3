"""Drift after go-live: what a box's records say against the bundle's reference (``medge monitor``).

Usage:
    from medge.edge.golive.drift import read_records, monitor
    batch = read_records(["results.jsonl", "watch_out/results/"], model.sha256, since=None)
    report = monitor(batch.records, model.manifest)

Records are what medge wrote on the box: ``medge predict`` JSON lines, ``medge watch``
result files (one JSON each, under OUT/results/) and ``medge node``'s results.jsonl.
Only classified records of this bundle (its model SHA-256) count; the rest are counted
by reason: an error, another model, skipped by the node, before ``--since``, undated
when ``--since`` is given (predict records carry no time), unreadable lines.

The reference is the bundle's own: the validation scores stored with its operating
point (``export.calibrate``) and the training data's profile (``edge.inputs.profile``).

Checks, each with its figures, its false-alarm rate, the smallest shift it detects
with ``POWER`` at the present sizes and, when it fires, the reason in words:
  - scores: the positive class's calibrated probability (the predicted class's for
    more than two classes) against the validation scores: a Laplace-smoothed PSI above
    the PSI that one distribution exceeds ``PSI_ALPHA`` of the time at these sizes
    (``edge.golive.shift.psi_noise_floor``, simulated), or a two-sample KS test with
    p < ``KS_ALPHA``; false alarms at most ``PSI_ALPHA + KS_ALPHA``. The PSI's usual
    reading (``PSI_WATCH``, ``PSI_DRIFT``) is reported as context, not as the alarm;
  - the share labelled positive against the validation share at the threshold: a
    two-sample test (Newcombe's hybrid score interval of the difference at
    1 - ``SHARE_ALPHA`` excludes 0), which counts the validation share's own
    uncertainty;
  - the share with warnings about the input (not the one every record of a model
    trained on synthetic images carries), and the inputs: bit depth, modality and photometric
    interpretation never seen in training, the shorter side outside the training
    range, and brightness and contrast (before and after CLAHE) outside the training
    p1..p99: flagged when the one-sided lower (1 - ``ONE_SAMPLE_ALPHA``) Wilson bound
    of the share exceeds the tolerated share (``SHARE_DELTA``, ``OUTSIDE_SHARE``):
    the bundle stores no reference count for these; manufacturers are listed
    (training profiles do not record them).

Where nothing alarms but a check cannot see a shift of ``COARSE_SD`` (scores) or
``COARSE_POINTS`` (shares) with ``POWER``, the verdict is "too little data", with
what could not be seen, never "stable".
Fewer than ``MIN_RECORDS`` records are reported as too few to judge, never as stable.
"""
from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medge.edge.errors import UsageError
from medge.edge.findings import is_multilabel
from medge.edge.golive.proportions import detectable_difference, detectable_share, newcombe_difference, wilson_interval
from medge.edge.golive.shift import ks_2samp, min_detectable_shift, psi, psi_noise_floor
from medge.edge.inputs.profile import STATS, input_warnings

MIN_RECORDS = 50  # fewer: too few to judge
PSI_DRIFT = 0.25  # the usual reading, shown as context: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a major shift
PSI_WATCH = 0.10
PSI_ALPHA = 0.0025  # false-alarm rate of the PSI: it alarms above the PSI one distribution exceeds this often
KS_ALPHA = 0.0025  # false-alarm rate of the KS test; the score check's (either) is at most their sum
SHARE_ALPHA = 0.01  # false-alarm rate of the positive share's two-sample test (Newcombe's interval excludes 0)
ONE_SAMPLE_ALPHA = 0.01  # warning and input shares: false-alarm rate when the true share sits at the tolerance
SHARE_DELTA = 0.10  # warning share: tolerated share of records with warnings (the bundle stores no reference count)
WARNING_REFERENCE = 0.0  # the validation cases are the training distribution: no warnings expected there
OUTSIDE_SHARE = 0.10  # inputs outside the training range: a share above this (at ONE_SAMPLE_ALPHA) flags drift
POWER = 0.80  # each check reports the smallest shift it detects this often at the present sizes
COARSE_SD = 0.5  # a score check that cannot see a 0.5 SD shift says "too little data", never "stable"
COARSE_POINTS = 0.10  # the same for a share that cannot see a change of 10 percentage points
KEPT = ("label", "probabilities", "warnings", "input")  # of each record that counts
MAX_RECORD_CHARS = 1 << 20  # a prediction record is a few kB: a longer line is not one
TIME_KEYS = ("classified_at", "processed_at", "received_at")  # node, watch, node


@dataclass
class RecordSet:
    """The records of this bundle that count, and how many of the others were left out and why."""

    records: list[dict] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)
    files: int = 0

    def leave_out(self, why: str) -> None:
        self.left_out[why] = self.left_out.get(why, 0) + 1


def parse_since(text: str | None) -> datetime.datetime | None:
    """``2026-11-01`` or an ISO date-time (UTC unless it says otherwise); UsageError otherwise."""
    if not text:
        return None
    try:
        t = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r}: give a date (2026-11-01) or an ISO date-time (2026-11-01T08:00:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)


def record_files(paths) -> list[Path]:
    """The record files of the given files and folders (folders: every *.jsonl and *.json below, sorted), each once
    (a file given and also inside a given folder is read once)."""
    out, seen = [], set()
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix in (".jsonl", ".json") and q.is_file())
        elif p.is_file():
            found = [p]
        else:
            raise UsageError(f"{p}: no such file or folder of records")
        for q in found:
            if q.resolve() not in seen:
                seen.add(q.resolve())
                out.append(q)
    return out


def _records_of(path: Path, stats: RecordSet):
    """The record dicts of one file, read as it goes: JSON lines, or one JSON document (a watch result). A year of
    records is never held in memory as text; a line over ``MAX_RECORD_CHARS`` is counted, not parsed."""
    try:
        f = open(path, encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        stats.leave_out(f"unreadable file ({e.strerror or e})")
        return
    stats.files += 1
    with f:
        read = lambda: f.read(MAX_RECORD_CHARS + 1) if path.suffix == ".json" else f.readline(MAX_RECORD_CHARS + 1)
        try:
            for chunk in iter(read, ""):
                if not chunk.strip():
                    continue
                if len(chunk) > MAX_RECORD_CHARS:
                    stats.leave_out("not a record (a line over 1 MB)")
                    while chunk and not chunk.endswith("\n"):  # skip the rest of it
                        chunk = read()
                    continue
                try:
                    rec = json.loads(chunk)
                except json.JSONDecodeError:
                    stats.leave_out("not JSON (a torn or foreign line)")
                    continue
                if isinstance(rec, dict):
                    yield rec
                else:
                    stats.leave_out("not a record")
        except OSError as e:
            stats.leave_out(f"unreadable file ({e.strerror or e})")


def _when(rec: dict) -> datetime.datetime | None:
    for key in TIME_KEYS:
        if rec.get(key):
            try:
                t = datetime.datetime.fromisoformat(str(rec[key]).replace("Z", "+00:00"))
                return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)
            except ValueError:
                return None
    return None


def read_records(paths, model_sha256: str, since: datetime.datetime | None = None) -> RecordSet:
    """The classified records of this bundle in ``paths`` (``record_files``), each counted once.

    Raises:
        UsageError: a path that does not exist.
    """
    out = RecordSet()
    for path in record_files(paths):
        for rec in _records_of(path, out):
            if "probabilities" not in rec or "model_sha256" not in rec:
                out.leave_out("not a medge prediction record")
            elif rec["model_sha256"] != model_sha256:
                out.leave_out("another model (model_sha256 differs)")
            elif rec.get("status") not in (None, "classified"):
                out.leave_out(f"node: {rec['status']}")
            elif rec.get("error") or not isinstance(rec.get("probabilities"), dict) or not rec["probabilities"]:
                out.leave_out("an error record")
            elif since is not None and _when(rec) is None:
                out.leave_out("undated (predict records carry no time; --since needs watch or node records)")
            elif since is not None and _when(rec) < since:
                out.leave_out("before --since")
            else:
                out.records.append({k: rec.get(k) for k in KEPT})  # what the checks read: not paths, timings, logits
    return out


def record_score(rec: dict, positive: str | None) -> float:
    p = rec["probabilities"]
    return float(p[positive]) if positive is not None else float(max(p.values()))


def _sees(check: dict, smallest: float, coarse: float, unit) -> dict:
    """The check's power at the present sizes: the smallest shift it detects with ``POWER``, and whether that is
    too coarse to call the absence of an alarm 'stable'."""
    check["detectable"] = {"power": POWER, "shift": smallest if math.isfinite(smallest) else None, "unit": unit[0]}
    check["too_little_data"] = bool(not check["drift"] and not smallest <= coarse)
    if check["too_little_data"]:
        check["note"] = ("too little data to see a shift below " + unit[1](smallest) if math.isfinite(smallest)
                         else "too little data to see any shift")
    return check


def _points(x: float) -> str:
    return f"{100 * x:.1f} percentage points"


def level_text(alpha: float) -> str:
    """The confidence level 1 - alpha in words: ``99%``, or ``99.7%`` where a whole percent would round it."""
    level = 100 * (1 - alpha)
    return f"{level:.0f}%" if abs(level - round(level)) < 1e-9 else f"{level:.1f}%"


def _positive_share_check(k: int, n: int, k_ref: int, n_ref: int, words: str, alpha: float = SHARE_ALPHA) -> dict:
    """The records' share against the validation share: Newcombe's hybrid score interval of the difference
    (both samples' uncertainty) at 1 - ``alpha``; drift when it excludes 0."""
    difference, low, high = newcombe_difference(k, n, k_ref, n_ref, alpha)
    reference, share = k_ref / n_ref, k / n
    drift = low > 0 or high < 0
    check = {"check": "positive share", "share": share, "reference": reference, "reference_cases": n_ref, "records": n,
             "difference": difference, "difference_low": low, "difference_high": high,
             "test": "two-sample, Newcombe's hybrid score interval of the difference", "false_alarm_rate": alpha,
             "drift": bool(drift)}
    if drift:
        check["reason"] = (f"{words}: {share:.1%} of {n} records against {reference:.1%} of {n_ref} validation cases "
                           f"(difference {100 * difference:+.1f} points, {level_text(alpha)} CI {100 * low:+.1f} to "
                           f"{100 * high:+.1f})")
    return _sees(check, detectable_difference(reference, n_ref, n, alpha, POWER), COARSE_POINTS,
                 ("share", _points))


def _one_sample_check(check: dict, k: int, n: int, tolerance: float) -> dict:
    """A share against a tolerated share: drift when the one-sided lower (1 - ONE_SAMPLE_ALPHA) Wilson bound
    exceeds it. The bundle holds no count of the reference to compare with, so the tolerance stands for it."""
    low, high = wilson_interval(k, n, 2 * ONE_SAMPLE_ALPHA)
    check.update(share=k / n, low=low, high=high, records=n, tolerance=tolerance, drift=bool(low > tolerance),
                 test=f"one-sample, Wilson lower bound above {tolerance:.0%}", false_alarm_rate=ONE_SAMPLE_ALPHA)
    return _sees(check, detectable_share(tolerance, n, ONE_SAMPLE_ALPHA, POWER) - tolerance, COARSE_POINTS,
                 ("share above the tolerance", lambda x: f"{_points(x)} above the tolerated {tolerance:.0%}"))


def _warning_check(k: int, n: int) -> dict:
    check = _one_sample_check({"check": "warning share", "reference": WARNING_REFERENCE}, k, n, SHARE_DELTA)
    if check["drift"]:
        check["reason"] = (f"records with warnings (inputs unlike the training data): {check['share']:.1%} of {n} "
                           f"records (lower {1 - ONE_SAMPLE_ALPHA:.0%} bound {check['low']:.1%}) against "
                           f"{SHARE_DELTA:.0%} tolerated")
    return check


def _distribution_check(ref: np.ndarray, cur: np.ndarray, score_of, psi_alpha: float, ks_alpha: float) -> dict:
    """PSI above its noise floor at 1 - ``psi_alpha``, or KS with p < ``ks_alpha``: the scores against the reference."""
    stability = psi(ref, cur)
    ks = ks_2samp(ref, cur)
    floor = psi_noise_floor(10, len(ref), len(cur), 1 - psi_alpha)
    psi_drift, ks_drift = stability["psi"] > floor, ks["pvalue"] < ks_alpha
    reading = "major" if stability["psi"] > PSI_DRIFT else "moderate" if stability["psi"] >= PSI_WATCH else "small"
    check = {"check": "score distribution", "score_of": score_of, "psi": stability["psi"],
             "psi_reading": reading, "psi_bins": stability["bins"], "psi_noise_floor": floor, "ks": ks,
             "reference_cases": int(len(ref)), "records": int(len(cur)),
             "test": "PSI (Laplace-smoothed) above its simulated noise floor, or two-sample KS",
             "false_alarm_rate": psi_alpha + ks_alpha, "drift": bool(psi_drift or ks_drift),
             "median": float(np.median(cur)), "reference_median": float(np.median(ref))}
    if check["drift"]:
        check["reason"] = (f"the scores of {score_of} moved: PSI {stability['psi']:.3f} ({reading} by the "
                           f"usual reading; chance alone exceeds {floor:.3f} at these sizes {psi_alpha:.2%} of the "
                           f"time), KS D {ks['statistic']:.3f} p {ks['pvalue']:.2g}; median {check['median']:.3f} "
                           f"against {check['reference_median']:.3f} on the validation cases")
    return _sees(check, min_detectable_shift(len(ref), len(cur), psi_alpha, ks_alpha), COARSE_SD,
                 ("SD (location shift)", lambda x: f"{x:.2f} SD of the scores"))


def score_checks(records: list[dict], op: dict) -> list[dict]:
    """PSI and KS of the records' scores against the validation scores; the positive share against validation's."""
    v = op.get("validation") or {}
    if not v.get("scores"):
        return []
    positive = op.get("positive")
    ref = np.asarray(v["scores"], np.float64)
    cur = np.array([record_score(r, positive) for r in records], np.float64)
    out = [_distribution_check(ref, cur, v.get("score_of"), PSI_ALPHA, KS_ALPHA)]
    if positive is not None and op.get("threshold") is not None:
        k_ref = int(np.sum(ref >= float(op["threshold"])))
        k = sum(r.get("label") == positive for r in records)
        out.append(_positive_share_check(k, len(records), k_ref, len(ref), f"labelled {positive}"))
    return out


def finding_checks(records: list[dict], op: dict) -> list[dict]:
    """A multi-label bundle's checks, per finding with validation scores: its calibrated probability against its
    validation scores (PSI and KS) and, where it has a threshold, its positive share against validation's. The
    reference is every validation image (``all_scores``), not only those with a known label: under ``--uncertain
    ignore`` the masked images are left out of the figures but are images a site sends too.

    Multiplicity: with K such findings each test runs at its single-label rate divided by K (Bonferroni): PSI_ALPHA
    / K, KS_ALPHA / K, SHARE_ALPHA / K. The chance that any finding's score check alarms on no shift stays at most
    PSI_ALPHA + KS_ALPHA, and any share check's at most SHARE_ALPHA, whatever the findings' correlation: the
    single-label bundle's rates for its one score and one share check.

    Args:
        records: classified records of the bundle (``probabilities`` per finding).
        op: the manifest's multi-label ``operating_point`` section (``edge.findings``).

    Returns:
        The checks, each with ``finding`` and ``score_of`` its name and its ``false_alarm_rate`` (per finding).
    """
    entries = [e for e in op.get("findings") or [] if isinstance(e, dict) and (e.get("validation") or {}).get("scores")]
    k = max(len(entries), 1)
    out = []
    for e in entries:
        name = e["name"]
        # every validation image's probability where the bundle keeps it (a site's records are of all its images,
        # uncertain ones included), else the labelled cases' (bundles exported before all_scores)
        ref = np.asarray(e["validation"].get("all_scores") or e["validation"]["scores"], np.float64)
        cur = np.array([float(r["probabilities"][name]) for r in records], np.float64)
        out.append({**_distribution_check(ref, cur, name, PSI_ALPHA / k, KS_ALPHA / k), "finding": name})
        if e.get("threshold") is not None:
            t = float(e["threshold"])
            share = _positive_share_check(int(np.sum(cur >= t)), len(cur), int(np.sum(ref >= t)), len(ref),
                                          f"{name} present (probability >= {t:.3f})", SHARE_ALPHA / k)
            out.append({**share, "finding": name})
    return out


def _outside_check(name: str, values: list, is_outside, words: str, reference: str) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    k, n = sum(bool(is_outside(v)) for v in values), len(values)
    check = _one_sample_check({"check": name, "outside": k, "reference": reference}, k, n, OUTSIDE_SHARE)
    if check["drift"]:
        check["reason"] = f"{words}: {k} of {n} records ({k / n:.0%}; {reference})"
    return check


def input_checks(records: list[dict], profile: dict | None) -> list[dict]:
    """The records' inputs against the training data profile (``edge.inputs.profile``)."""
    if not profile:
        return []
    inputs = [r.get("input") or {} for r in records]
    checks = []
    for key, words in (("bits", "bit depth"), ("modalities", "modality"), ("photometric", "photometric interpretation")):
        seen = set(map(str, (profile.get(key) or {})))
        field_ = {"modalities": "modality"}.get(key, key)
        if seen:
            checks.append(_outside_check(words, [None if i.get(field_) is None else str(i.get(field_)) for i in inputs],
                                         lambda v, seen=seen: v not in seen, f"{words} never seen in training",
                                         f"training had {', '.join(sorted(seen))}"))
    short = profile.get("short_side")
    if short:
        sides = [min(i["width"], i["height"]) if i.get("width") and i.get("height") else None for i in inputs]
        checks.append(_outside_check("image size", sides, lambda s: not short["min"] <= s <= short["max"],
                                     "shorter side outside the training range",
                                     f"training {short['min']:g} to {short['max']:g} px"))
    for key, words in STATS.items():
        s = (profile.get("stats") or {}).get(key)
        if s:
            values = [(i.get("stats") or {}).get(key) for i in inputs]
            checks.append(_outside_check(key, values, lambda v, s=s: not s["p01"] <= v <= s["p99"],
                                         f"{words} outside the training images' p1..p99",
                                         f"training p1..p99 {s['p01']:.1f} to {s['p99']:.1f}"))
    return [c for c in checks if c is not None]


def counts(records: list[dict], key) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        v = str(key(r))
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def monitor(records: list[dict], manifest: dict) -> dict:
    """The drift report's checks and verdict for this bundle's classified records.

    Returns:
        {"records", "verdict": "drift" | "stable" | "too little data" | "too few records", "reasons", "checks",
        "manufacturers", ...}: "too little data" when nothing alarmed but a check cannot see a shift of
        ``COARSE_SD`` (scores) or ``COARSE_POINTS`` (shares) with ``POWER`` at these sizes; its reasons say
        what it could not see. Each check carries its "false_alarm_rate" and "detectable" shift.
    """
    n = len(records)
    op = manifest.get("operating_point") or {}
    report = {"records": n, "manufacturers": counts(records, lambda r: (r.get("input") or {}).get("manufacturer")),
              "modalities": counts(records, lambda r: (r.get("input") or {}).get("modality")),
              "labels": counts(records, lambda r: r.get("label")),
              "reference": {"validation_cases": len((op.get("validation") or {}).get("scores") or []),
                            "training_images": (manifest.get("data_profile") or {}).get("images")}}
    if n < MIN_RECORDS:
        return {**report, "verdict": "too few records", "checks": [], "reasons": [
            f"{n} records: at least {MIN_RECORDS} are needed to judge drift"]}
    if is_multilabel(manifest):
        checks = finding_checks(records, op)
        k = len({c["finding"] for c in checks if c["check"] == "score distribution"})
        report["reference"]["validation_cases"] = (op.get("validation") or {}).get("cases", 0)
        report["multiplicity"] = {
            "method": "Bonferroni over the findings with validation scores", "findings": k,
            "score_checks_false_alarm": PSI_ALPHA + KS_ALPHA, "share_checks_false_alarm": SHARE_ALPHA,
            "note": "each finding's test runs at the rate divided by the findings: these are the rates of any alarm"}
    else:
        checks = score_checks(records, op)
    checks.append(_warning_check(sum(bool(input_warnings(r.get("warnings") or [])) for r in records), n))
    checks += input_checks(records, manifest.get("data_profile"))
    reasons = [c["reason"] for c in checks if c.get("drift")]
    if not op.get("validation") and not manifest.get("data_profile"):
        report["note"] = "the bundle has neither validation scores nor a data profile: only the warning share is checked"
    by_note: dict[str, list[str]] = {}  # the input checks share one size, so one note: said once
    for c in checks:
        if c.get("too_little_data"):
            by_note.setdefault(c["note"], []).append(f"{c['check']} of {c['finding']}" if c.get("finding") else c["check"])
    coarse = [f"{', '.join(names)}: {note}" for note, names in by_note.items()]
    verdict = "drift" if reasons else "too little data" if coarse else "stable"
    return {**report, "verdict": verdict, "reasons": reasons or coarse, "checks": checks}


def score_series(records: list[dict], manifest: dict) -> tuple[list[float], list[float], str | None]:
    """(validation scores, the records' scores, which class) for the drift report's histogram."""
    op = manifest.get("operating_point") or {}
    v = op.get("validation") or {}
    return list(v.get("scores") or []), [record_score(r, op.get("positive")) for r in records], v.get("score_of")


def finding_series(records: list[dict], manifest: dict) -> list[tuple[str, list[float], list[float]]]:
    """Per finding of a multi-label bundle: (name, its validation scores, the records' probabilities), for the
    drift report's histograms."""
    out = []
    for e in (manifest.get("operating_point") or {}).get("findings") or []:
        ref = list((e.get("validation") or {}).get("scores") or [])
        out.append((e["name"], ref, [float(r["probabilities"][e["name"]]) for r in records]))
    if not out:  # exported without an operating point: the records only
        names = [str(c) for c in manifest.get("classes") or []]
        out = [(n, [], [float(r["probabilities"][n]) for r in records]) for n in names]
    return out
