"""``medge monitor``: is what the box sees still what the model was validated on? (base install)

Usage: medge monitor --model bundles/xray results.jsonl watch_out/results/ --since 2026-11-01 --out drift/drift.json

Reads the records medge wrote (predict JSON lines, watch result files, the node's
results.jsonl; folders are searched for *.jsonl and *.json) and compares this
bundle's classified records with its reference: the score distribution against the
validation scores stored with its operating point (a Laplace-smoothed PSI above its noise floor, and a KS test), the shares
labelled positive and with warnings, and the inputs (bit depth, modality, size,
brightness and contrast) against the training data profile (``edge.golive.drift``).

A multi-label bundle's records are checked per finding: each finding's calibrated
probability against its validation scores, and its share present (at its threshold)
against validation's, each test at the single-label rate divided by the findings
(Bonferroni: any false alarm across the findings stays at the single-label rate);
NAME.scores.png holds one histogram per finding.

Writes --out (JSON) and beside it NAME.md and NAME.scores.png (reference and
current score histograms). Records of other models, errors, skipped instances and
unreadable lines are counted, never mixed in.

Each check states its false-alarm rate and the smallest shift it detects with 80%
power at the present sizes; where that is coarse (above 0.5 SD of the scores, or
10 percentage points of a share) and nothing alarmed, the verdict is "too little
data" with what could not be seen, never "stable".

Exit status: 0 stable (or too few records, or too little data to judge: said so),
1 drift (each reason printed), 2 usage error.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from medge import __version__
from medge.edge.findings import is_multilabel
from medge.edge.golive import drift
from medge.edge.outputs import atomic_write_text, check_report_files, wrote
from medge.edge.paths import to_json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("monitor", help="drift of a box's records against the bundle's validation and training data "
                                       "(base install)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+", metavar="RECORDS", help="record files (JSONL, JSON) or folders of them")
    p.add_argument("--model", required=True, metavar="BUNDLE", help="the bundle whose records to judge")
    p.add_argument("--since", help="only records made from this date or time on (UTC unless given; watch and node "
                                   "records carry their time, predict records do not)")
    p.add_argument("--out", required=True, help="the JSON report; NAME.md and NAME.scores.png are written beside it")
    p.add_argument("--overwrite", action="store_true", help="replace existing report files")
    return p


def output_paths(out: str, overwrite: bool) -> dict[str, Path]:
    """--out and the summary and plot beside it, checked before any work."""
    return check_report_files(out, {"summary": ".md", "scores": ".scores.png"}, overwrite, "drift")


def run(args: argparse.Namespace) -> int:
    from medge.edge.model import Model

    since = drift.parse_since(args.since)
    paths = output_paths(args.out, args.overwrite)
    model = Model.open(args.model)  # the manifest, hash-checked: no inference here, so no net and no self-test
    found = drift.read_records(args.records, model.sha256, since)
    report = {"report": "medge drift", "version": 1, "medge": __version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "model": {"bundle": str(model.bundle_dir), "sha256": model.sha256, "classes": model.classes},
              "since": since.isoformat() if since else None, "files": found.files, "left_out": found.left_out,
              **drift.monitor(found.records, model.manifest)}
    write_outputs(paths, report, found.records, model.manifest)
    print(f"{report['records']} records of this model in {found.files} file(s); verdict: {report['verdict']}"
          + (f"; left out: {', '.join(f'{n} {k}' for k, n in found.left_out.items())}" if found.left_out else ""),
          file=sys.stderr)
    for reason in report["reasons"]:
        print(f"  {reason}", file=sys.stderr)
    return 1 if report["verdict"] == "drift" else 0


def write_outputs(paths: dict[str, Path], report: dict, records: list[dict], manifest: dict) -> None:
    from medge.edge.golive import plots

    if is_multilabel(manifest):  # one histogram per finding
        charts = [plots.histogram_plot(_series(ref, cur), f"Scores of {name}", "calibrated probability")
                  for name, ref, cur in drift.finding_series(records, manifest)]
        plots.write_png(paths["scores"], plots.grid(charts))
    else:
        ref, cur, score_of = drift.score_series(records, manifest)
        plots.write_png(paths["scores"], plots.histogram_plot(_series(ref, cur), f"Scores of {score_of or 'the predicted class'}",
                                                              "calibrated probability"))
    atomic_write_text(paths["summary"], markdown(report, paths))
    atomic_write_text(paths["report"], to_json(report, indent=2) + "\n")
    wrote(paths["report"], "drift report")


def _series(ref: list[float], cur: list[float]) -> list[dict]:
    return [{"values": ref, "label": f"validation (n = {len(ref)})"}, {"values": cur, "label": f"records (n = {len(cur)})"}]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _detectable(check: dict) -> str:
    """The smallest shift the check sees with 80% power, and the note when that is too coarse."""
    d = check["detectable"]
    if d["shift"] is None:
        shown = "none at these sizes"
    elif d["unit"].startswith("SD"):
        shown = f"{d['shift']:.2f} SD"
    else:
        shown = f"{100 * d['shift']:.1f} points"
    return f"{shown} (**too little data**)" if check.get("too_little_data") else shown


def markdown(report: dict, paths: dict[str, Path]) -> str:
    out = [f"# Drift of {Path(report['model']['bundle']).name}: {report['verdict']}", "",
           f"- model SHA-256 `{report['model']['sha256'][:16]}...`; {report['records']} records in {report['files']} "
           f"file(s)" + (f" since {report['since']}" if report["since"] else ""),
           "- left out: " + (", ".join(f"{n} {k}" for k, n in report["left_out"].items()) or "none"),
           f"- created {report['created']} by medge {report['medge']}", ""]
    if report.get("note"):
        out += [f"Note: {report['note']}", ""]
    if report.get("multiplicity"):
        m = report["multiplicity"]
        out += [f"Findings: each finding's tests run at the single-label rates divided by {m['findings']} findings "
                f"(Bonferroni): any score check alarms on no shift at most {m['score_checks_false_alarm']:.2%} of the "
                f"time, any positive-share check at most {m['share_checks_false_alarm']:.2%}.", ""]
    if report["reasons"]:
        heading = "Why:" if report["verdict"] == "drift" else "What these sizes cannot show:"
        out += [heading, ""] + [f"- {r}" for r in report["reasons"]] + [""]
    if report["checks"]:
        out += ["| check | figure | reference | records | false-alarm rate | smallest shift seen (80%) | drift |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in report["checks"]:
            if c["check"] == "score distribution":
                fig = (f"PSI {c['psi']:.3f} ({c['psi_reading']}; noise floor {c['psi_noise_floor']:.3f}), "
                       f"KS D {c['ks']['statistic']:.3f} (p {c['ks']['pvalue']:.2g})")
                ref = f"{c['reference_cases']} validation cases"
            elif c["check"] == "positive share":
                level = drift.level_text(c["false_alarm_rate"])
                fig = (f"{c['share']:.1%}, difference {100 * c['difference']:+.1f} points ({level} CI "
                       f"{100 * c['difference_low']:+.1f} to {100 * c['difference_high']:+.1f})")
                ref = f"{c['reference']:.1%} of {c['reference_cases']} validation cases"
            elif "outside" in c:
                fig, ref = f"{c['outside']} outside ({c['share']:.1%})", f"{c['reference']}; {c['tolerance']:.0%} tolerated"
            else:
                fig, ref = f"{c['share']:.1%} ({c['low']:.1%} to {c['high']:.1%})", f"{c['tolerance']:.0%} tolerated"
            name = f"{c['check']} of {c['finding']}" if c.get("finding") else c["check"]
            out.append(f"| {name} | {fig} | {ref} | {c['records']} | {c['false_alarm_rate']:.2%} | "
                       f"{_detectable(c)} | {'**yes**' if c['drift'] else 'no'} |")
        out.append("")
    out += [f"![scores]({paths['scores'].name})", "", "Manufacturers: "
            + (", ".join(f"{k} {n}" for k, n in report["manufacturers"].items()) or "none"), ""]
    return "\n".join(out)
