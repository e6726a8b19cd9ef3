"""``medge validate``: a bundle on a site's own labelled cases, before go-live (base install).

Usage: medge validate --model bundles/xray --data site_cases/ --out validation/report.json --require "auc>=0.85,sensitivity>=0.90"

Cases: --data DIR/<class>/... (class folders named after the model's classes,
searched by content like medge predict), or --labels CSV with a header path,label
(relative paths from --data, else from the CSV's folder). PNG, JPEG, TIFF, BMP and
DICOM (with the dicom extra for compressed DICOM).

Figures at the bundle's operating point (its calibrated probabilities and threshold;
argmax for a bundle exported without one): AUC with a 95% CI by Newcombe's score
method (a lower bound below 1 also where the classes are perfectly separated); sensitivity,
specificity, PPV and NPV with Wilson 95% CIs; the confusion matrix, Brier score,
ECE and a 10-bin reliability table; per subgroup (manufacturer, modality, view
position, photometric interpretation, bit depth, size band) with >= 20 cases; and
the AUC difference with the bundle's own validation cases.

Writes --out (the JSON report) and beside it NAME.md (the summary), NAME.roc.png,
NAME.reliability.png and NAME.cases.jsonl (one record per input: the prediction
and its truth, or why it is not a case). Unreadable and unlabelled files are
counted and listed, never dropped.

A multi-label bundle (findings, each with its own threshold) is validated on a
label index: --labels INDEX.csv --images DIR --labels-format nih|chexpert|generic
[--uncertain ignore|zeros|ones] (docs/datasets.md), e.g.
  medge validate --model bundles/cxr --labels Data_Entry.csv --images images/ --labels-format nih --out v/report.json
Per finding: AUC with the same interval on its unmasked cases (an uncertain label
under "ignore" is masked for that finding only), sensitivity, specificity, PPV and
NPV at its threshold (Wilson), the export's guarantee confirmed or refuted on these
cases (one-sided Clopper-Pearson bounds, edge.golive.multilabel), and the AUC
against the bundle's validation AUC; a finding without a threshold (unsupported at
export) gets its AUC only. Macro and micro AUC; subgroups by sex, age band (<40,
40-59, 60-79, >=80), view position (PA, AP, lateral) and manufacturer; NAME.roc.png
holds one ROC per finding. --require is judged per finding (figures at a threshold
on the findings that have one). Files the index names that are missing or
unreadable are counted and listed. A multi-label bundle needs --labels (class
folders hold one label per image); a single-label bundle refuses --labels-format.

Exit status: 0 the report written and every --require met (judged on the lower
95% CI bound; an AUC requirement also needs 10 cases of each class), 1 a requirement
not met (named, with the reason), a multi-label bundle's promised guarantee refuted
at this site (named), or no usable case, 2 usage error (a requirement that
cannot be read, or brier/ece, which have no interval to judge).
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from medge import __version__
from medge.edge.apps.options import add_model_arguments, load_model
from medge.edge.errors import UsageError
from medge.edge.findings import MULTILABEL, label_of
from medge.edge.golive import multilabel as ml
from medge.edge.golive import validation as val
from medge.edge.golive.roc import AUC_METHOD
from medge.edge.inputs.index import FORMATS, UNCERTAIN
from medge.edge.outputs import atomic_write_text, check_report_files, wrote
from medge.edge.paths import to_json
from medge.edge.progress import ProgressLine

SUFFIXES = {"summary": ".md", "roc": ".roc.png", "reliability": ".reliability.png", "cases": ".cases.jsonl"}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("validate", help="validate a bundle on a site's labelled cases: AUC, sensitivity, ... with CIs "
                                        "(base install)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--data", help="folder of class folders (DIR/<class>/...); with --labels, the root of its relative paths")
    p.add_argument("--labels", metavar="CSV", help="CSV with a header path,label instead of class folders; for a "
                                                   "multi-label bundle, a label index (--labels-format)")
    p.add_argument("--images", metavar="DIR", help="the folder the index's paths are under (default: --data, else the "
                                                   "index's folder)")
    p.add_argument("--labels-format", choices=FORMATS, help="the index's format, for a multi-label bundle (default "
                                                            "generic; docs/datasets.md)")
    p.add_argument("--uncertain", choices=UNCERTAIN, help="an uncertain label (-1): ignore (masked out of that "
                                                          "finding's figures; the default), zeros or ones")
    p.add_argument("--out", required=True, help="the JSON report; NAME.md, NAME.roc.png, NAME.reliability.png and "
                                                "NAME.cases.jsonl are written beside it")
    p.add_argument("--require", metavar="CRITERIA",
                   help='acceptance criteria, e.g. "auc>=0.85,sensitivity>=0.90", judged on the lower 95%% CI bound (auc, '
                        f"sensitivity, specificity, ppv, npv, accuracy; auc needs {val.MIN_CASES_PER_CLASS} cases of each "
                        "class): exit 1 when one is not met")
    p.add_argument("--positive", help="the positive class, for a bundle without an operating point (default: the class "
                                      "that is not 'normal')")
    p.add_argument("--overwrite", action="store_true", help="replace existing report files")
    return p


def output_paths(out: str, overwrite: bool) -> dict[str, Path]:
    """--out and the files beside it, each checked before any work (nothing is replaced without --overwrite)."""
    return check_report_files(out, SUFFIXES, overwrite, "validation")


def collect_cases(args, classes: list[str]) -> tuple[list[val.Case], list[val.Problem]]:
    if args.labels:
        return val.cases_from_csv(args.labels, classes, args.data)
    if not args.data:
        raise UsageError("give --data DIR (class folders) or --labels CSV")
    return val.cases_from_folders(args.data, classes)


def case_records(model, cases: list[val.Case], args) -> list[dict]:
    """One prediction record per case, with ``truth``; in case order."""
    progress = ProgressLine(len(cases), "cases")
    out = []
    for case, pred in zip(cases, model.predict_iter([c.path for c in cases], args.batch_size, args.workers,
                                                    args.max_pixels, streams=args.streams), strict=True):
        out.append({**pred.to_record(model.sha256, model.runtime), "path": case.path, "truth": case.truth})
        progress.update()
    progress.close()
    return out


def run(args: argparse.Namespace) -> int:
    requirements = val.parse_requirements(args.require)
    paths = output_paths(args.out, args.overwrite)
    model = load_model(args)
    if model.findings is not None:
        return run_findings(args, model, requirements, paths)
    if args.labels_format or args.uncertain:
        raise UsageError(f"{args.model}: a single-label bundle ({', '.join(model.classes)}): --labels-format and "
                         "--uncertain read a findings index for a multi-label bundle; give --data DIR/<class>/ or "
                         "--labels CSV with a header path,label")
    if args.images and args.data:
        raise UsageError("give --data or --images, not both")
    args.data = args.data or args.images
    decision = val.decision_of(model, args.positive)
    cases, problems = collect_cases(args, model.classes)
    records = case_records(model, cases, args)
    failed = [val.Problem(r["path"], "unreadable", r["error"]) for r in records if r["error"]]
    classified = [r for r in records if not r["error"]]
    report = build_report(model, decision, args, classified, problems + failed, requirements)
    write_outputs(paths, report, records, problems)
    print(summary_line(report), file=sys.stderr)
    if not classified:
        print("no usable case: nothing could be judged", file=sys.stderr)
        return 1
    for v in report["requirements"]:
        if not v["passed"]:
            print(f"requirement not met: {v['requirement']} ({v['reason']})", file=sys.stderr)
    return 0 if report["passed"] else 1


def build_report(model, decision: val.Decision, args, classified: list[dict], problems: list[val.Problem],
                 requirements: list[val.Requirement]) -> dict:
    op = model.manifest.get("operating_point")
    if model.own_operating_point:  # the variant's own section: its threshold, and its validation scores to compare
        op = model.bundle.variants[model.variant].gates[model.engine]["operating_point"]
    kinds: dict[str, int] = {}
    for p in problems:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    report = {
        "report": "medge validation", "version": 1, "medge": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"bundle": str(model.bundle_dir), "sha256": model.sha256, "classes": model.classes,
                  "arch": model.manifest["model"].get("arch"), "runtime": model.runtime},
        "decision": {"positive": decision.positive, "threshold": decision.threshold, "source": decision.source,
                     "calibrated": decision.calibrated, "guarantee": decision.guarantee},
        "data": {"folder": args.data, "labels": args.labels},
        "counts": {"cases": len(classified), "positives": sum(r["truth"] == decision.positive for r in classified),
                   "problems": kinds},
        "problems": [{"path": p.path, "kind": p.kind, "reason": p.reason} for p in problems],
        "ci_method": {"auc": AUC_METHOD, "proportions": "Wilson score interval", "level": 0.95},
    }
    if classified:
        report.update(val.evaluate_records(classified, decision, op, requirements))
    else:
        report.update(figures=None, requirements=[r.judge({}) for r in requirements], passed=False)
    return report


def write_outputs(paths: dict[str, Path], report: dict, records: list[dict], problems: list[val.Problem]) -> None:
    """The cases file (``records`` of the cases, then a record per ``problems``: inputs that never were cases), the
    plots, the summary and, last, the report."""
    from medge.edge.golive import plots

    lines = [to_json(r) for r in records] + [to_json({"path": p.path, "error": p.reason, "problem": p.kind, "truth": None})
                                             for p in problems]
    atomic_write_text(paths["cases"], "\n".join(lines) + ("\n" if lines else ""))
    if report.get("figures"):
        plots.write_png(paths["roc"], roc_chart(report))
        f = report["figures"]
        plots.write_png(paths["reliability"], plots.reliability_plot(f["reliability"]["bins"], "Reliability (site cases)",
                                                                     f["ece"]))
    atomic_write_text(paths["summary"], markdown(report, paths))
    atomic_write_text(paths["report"], to_json(report, indent=2) + "\n")
    wrote(paths["report"], "validation report")


def roc_chart(report: dict):
    from medge.edge.golive import plots

    f, d = report["figures"], report["decision"]
    auc = f["auc"]
    curves = [{"fpr": report["roc"]["fpr"], "tpr": report["roc"]["tpr"],
               "label": f"site cases, AUC {val.ci_text(auc, to='-')}"}]
    ref = report.get("against_bundle")
    point = {"fpr": 1 - f["specificity"]["value"], "tpr": f["sensitivity"]["value"],
             "label": f"threshold {d['threshold']:.3f}: sens {_num(f['sensitivity']['value'])}, "
                      f"spec {_num(f['specificity']['value'])}"}
    if ref is not None:
        curves[0]["label"] += f"; bundle validation {_num(ref['auc_2'])}"
    return plots.roc_plot(curves, f"ROC of {d['positive']} (n = {report['counts']['cases']})", point)


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def summary_line(report: dict) -> str:
    c = report["counts"]
    problems = ", ".join(f"{n} {k}" for k, n in sorted(c["problems"].items())) or "none"
    f = report.get("figures")
    if not f:
        return f"{c['cases']} cases; problems: {problems}"
    return (f"{c['cases']} cases ({c['positives']} {report['decision']['positive']}); AUC {val.ci_text(f['auc'])}, sensitivity "
            f"{val.ci_text(f['sensitivity'])}, specificity {val.ci_text(f['specificity'])}; problems: {problems}"
            + ("" if not report["requirements"] else f"; requirements {'met' if report['passed'] else 'NOT met'}")
            + f"; operating point at export: {report['decision'].get('guarantee', 'no guarantee recorded')}")


def _runtime_line(runtime: dict | None) -> str:
    """What computed the figures: they hold for this engine and variant (another variant is validated anew)."""
    if not runtime:
        return "- runtime not recorded"
    note = "" if runtime["variant"] == "fp32" else " (a fast variant: validate again before running another)"
    return f"- computed by the {runtime['engine']} engine, {runtime['variant']} variant{note}"


def markdown(report: dict, paths: dict[str, Path]) -> str:
    """The summary a clinical lead reads: headline figures, requirements, subgroups, problems."""
    d, c, f = report["decision"], report["counts"], report.get("figures")
    out = [f"# Validation of {Path(report['model']['bundle']).name} on site cases", "",
           f"- model SHA-256 `{report['model']['sha256'][:16]}...`, classes {', '.join(report['model']['classes'])}",
           _runtime_line(report["model"].get("runtime")),
           f"- decision: {d['positive']!r} when its {'calibrated ' if d['calibrated'] else ''}probability >= "
           f"{d['threshold']:.4f} ({d['source']})",
           f"- operating point at export: {d.get('guarantee', 'no guarantee recorded')}",
           f"- {c['cases']} cases, {c['positives']} {d['positive']}; problems: "
           + (", ".join(f"{n} {k}" for k, n in sorted(c["problems"].items())) or "none"),
           f"- 95% CIs: AUC by Newcombe's score method, proportions by Wilson; created {report['created']} by medge "
           f"{report['medge']}", ""]
    if not f:
        return "\n".join(out + ["No usable case: nothing could be judged.", ""])
    out += ["| figure | value (95% CI) | cases |", "| --- | --- | --- |",
            f"| AUC | {val.ci_text(f['auc'])} | {c['cases']} |"]
    for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
        out.append(f"| {k} | {val.ci_text(f[k])} | {f[k]['n']} |")
    out += [f"| Brier score | {_num(f['brier'], 4)} | {c['cases']} |", f"| ECE (10 bins) | {_num(f['ece'], 4)} | {c['cases']} |",
            ""]
    m = f["matrix"]
    out += ["Confusion matrix (rows: truth, columns: prediction):", "",
            f"| | predicted not {d['positive']} | predicted {d['positive']} |", "| --- | --- | --- |",
            f"| not {d['positive']} | {m[0][0]} | {m[0][1]} |", f"| {d['positive']} | {m[1][0]} | {m[1][1]} |", ""]
    ref = report.get("against_bundle")
    if ref:
        out += [f"Against the bundle's own validation ({ref['bundle_cases']} cases, {ref.get('bundle_source')}): AUC "
                f"{_num(ref['auc_1'])} here vs {_num(ref['auc_2'])}, difference {val.ci_text(ref)}.", ""]
    if report["requirements"]:
        out += ["Requirements:", ""] + [
            f"- {'met' if v['passed'] else '**NOT met**'}: {v['requirement']} ({v['judged_on']} {_num(v['judged_value'])}"
            + ("" if v["passed"] else f": {v['reason']}") + ")"
            for v in report["requirements"]] + [""]
    out += [f"![ROC]({paths['roc'].name})", "", f"![Reliability]({paths['reliability'].name})", "", "## Subgroups", ""]
    for name, groups in report["subgroups"].items():
        out += [f"### {name}", "", "| group | cases | AUC | sensitivity | specificity |", "| --- | --- | --- | --- | --- |"]
        for value, g in groups.items():
            if "note" in g:
                out.append(f"| {value} | {g['cases']} | {g['note']} | | |")
            else:
                cells = " | ".join(val.ci_text(g[k]) for k in ("auc", "sensitivity", "specificity"))
                out.append(f"| {value} | {g['cases']} | {cells} |")
        out.append("")
    out += problem_lines(report, paths)
    return "\n".join(out)


def problem_lines(report: dict, paths: dict[str, Path]) -> list[str]:
    """The summary's list of inputs that are not cases (the first 50; the rest are in the cases file)."""
    if not report["problems"]:
        return []
    out = ["## Inputs that are not cases", ""] + [f"- {p['kind']}: {p['path']}: {p['reason']}"
                                                   for p in report["problems"][:50]]
    if len(report["problems"]) > 50:
        out.append(f"- ... {len(report['problems']) - 50} more in {paths['cases'].name}")
    return out + [""]


# A multi-label bundle (edge.findings): cases from a label index, figures per finding (edge.golive.multilabel).

def index_cases(args, names: list[str]) -> tuple[list, list[val.Problem]]:
    """The index's entries (each a case, with its targets of the bundle's findings) and its missing files.

    Raises:
        UsageError: no --labels. DataError: an index that cannot be read (edge.inputs.index names the line).
    """
    from medge.edge.inputs.index import read_index

    if not args.labels:
        raise UsageError(f"{args.model}: a multi-label bundle ({', '.join(names)}) is validated on a label index: give "
                         "--labels INDEX.csv --images DIR --labels-format nih|chexpert|generic (class folders hold one "
                         "label per image)")
    if args.images and args.data:
        raise UsageError("give --images (or --data), not both")
    images = args.images or args.data or str(Path(args.labels).parent)
    index = read_index(args.labels, images, fmt=args.labels_format or "generic", uncertain=args.uncertain or "ignore",
                       findings=names)
    args.index = {"format": index.format, "uncertain": index.uncertain, "findings": list(index.findings),
                  "images": images, "entries": len(index.entries)}
    not_matched = ml.findings_not_matched(index.named, names)
    args.index_warnings = (not_matched, ml.index_warnings(not_matched, len(index.rows or index.entries),
                                                          len(index.missing)))
    return list(index.entries), [val.Problem(p, "missing", why) for p, why in index.missing]


def _targets(entry, names: list[str], index_findings: list[str]) -> dict:
    out = {}
    for n in names:
        v = entry.targets[index_findings.index(n)] if n in index_findings else None
        out[n] = None if v is None or v != v else float(v)
    return out


def finding_records(model, entries: list, args) -> list[dict]:
    """One prediction record per index entry, with ``targets`` and the index's patient, sex, age and view."""
    names, found = model.findings.names, args.index["findings"]
    progress = ProgressLine(len(entries), "cases")
    out = []
    for e, pred in zip(entries, model.predict_iter([e.file for e in entries], args.batch_size, args.workers,
                                                   args.max_pixels, streams=args.streams), strict=True):
        targets = _targets(e, names, found)
        out.append({**pred.to_record(model.sha256, model.runtime), "path": e.file, "targets": targets,
                    "truth": label_of([n for n in names if targets[n] == 1.0]), "patient": e.patient, "sex": e.sex,
                    "age": e.age, "view": e.view})
        progress.update()
    progress.close()
    return out


def run_findings(args, model, requirements: list[val.Requirement], paths: dict[str, Path]) -> int:
    """``medge validate`` of a multi-label bundle: exit 1 when a supported finding's guarantee is refuted at the site,
    a requirement is not met, or no case is usable; else 0."""
    entries, problems = index_cases(args, model.findings.names)
    records = finding_records(model, entries, args)
    failed = [val.Problem(r["path"], "unreadable", r["error"]) for r in records if r["error"]]
    classified = [r for r in records if not r["error"]]
    report = findings_report(model, args, classified, problems + failed, requirements)
    write_findings_outputs(paths, report, records, problems)
    for line in report["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    print(findings_summary_line(report), file=sys.stderr)
    if not classified:
        print("no usable case: nothing could be judged", file=sys.stderr)
        return 1
    for name in report["guarantees"]["refuted"]:
        print(f"guarantee refuted at this site: {name}", file=sys.stderr)
    for v in report["requirements"]:
        if not v["passed"]:
            print(f"requirement not met: {v['requirement']} ({v['reason']})", file=sys.stderr)
    return 0 if report["passed"] else 1


def findings_report(model, args, classified: list[dict], problems: list[val.Problem],
                    requirements: list[val.Requirement]) -> dict:
    kinds: dict[str, int] = {}
    for p in problems:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    not_matched, warnings = getattr(args, "index_warnings", ({"index_only": [], "bundle_only": []}, []))
    report = {
        "report": "medge validation", "version": 1, "medge": __version__, "task": MULTILABEL,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"bundle": str(model.bundle_dir), "sha256": model.sha256, "findings": model.findings.names,
                  "calibrated": model.findings.calibrated, "arch": model.manifest["model"].get("arch"),
                  "runtime": model.runtime},
        "data": {"labels": args.labels, **args.index},
        "counts": {"cases": len(classified), "patients": len({r["patient"] for r in classified if r["patient"]}),
                   "problems": kinds},
        "problems": [{"path": p.path, "kind": p.kind, "reason": p.reason} for p in problems],
        "findings_not_matched": not_matched, "warnings": warnings,
        "ci_method": {"auc": AUC_METHOD, "proportions": "Wilson score interval", "level": 0.95,
                      "guarantee": "one-sided Clopper-Pearson bounds (edge.golive.multilabel)",
                      "age_bands": [b[2] for b in ml.AGE_BANDS], "min_subgroup": val.MIN_SUBGROUP},
    }
    if classified:
        report.update(ml.evaluate_findings(classified, model.findings, model.manifest.get("operating_point"),
                                           requirements))
    else:
        report.update(findings=None, summary=None, roc={}, subgroups={},
                      guarantees={k: [] for k in ml.GUARANTEE_LISTS},
                      requirements=[r.judge({}) for r in requirements], passed=False)
    return report


def write_findings_outputs(paths: dict[str, Path], report: dict, records: list[dict],
                           problems: list[val.Problem]) -> None:
    """The cases file, the ROC grid (one chart per finding), the summary and, last, the report."""
    from medge.edge.golive import plots

    lines = [to_json(r) for r in records] + [to_json({"path": p.path, "error": p.reason, "problem": p.kind,
                                                      "targets": None}) for p in problems]
    atomic_write_text(paths["cases"], "\n".join(lines) + ("\n" if lines else ""))
    if report.get("findings"):
        charts = [roc_of_finding(f, report["roc"][f["name"]]) for f in report["findings"]]
        plots.write_png(paths["roc"], plots.grid(charts))
    atomic_write_text(paths["summary"], findings_markdown(report, paths))
    atomic_write_text(paths["report"], to_json(report, indent=2) + "\n")
    wrote(paths["report"], "validation report")


def roc_of_finding(f: dict, roc: dict):
    from medge.edge.golive import plots

    point = None
    if f["supported"] and f["sensitivity"]["n"] and f["specificity"]["n"]:
        point = {"fpr": 1 - f["specificity"]["value"], "tpr": f["sensitivity"]["value"],
                 "label": f"threshold {f['threshold']:.3f}"}
    curve = {"fpr": roc["fpr"], "tpr": roc["tpr"], "label": f"AUC {val.ci_text(f['auc'], to='-')}"}
    return plots.roc_plot([curve], f"{f['name']} ({f['positives']} of {f['cases']} cases)", point)


def findings_summary_line(report: dict) -> str:
    c, s = report["counts"], report.get("summary")
    problems = ", ".join(f"{n} {k}" for k, n in sorted(c["problems"].items())) or "none"
    warned = "".join(f"WARNING: {w}. " for w in report.get("warnings", ()))
    if not s:
        return f"{warned}{c['cases']} cases; problems: {problems}"
    g = report["guarantees"]
    return (f"{warned}{c['cases']} cases, {len(report['findings'])} findings; macro AUC {_num(s['macro_auc'])}, micro AUC "
            f"{_num(s['micro_auc'])}; guarantees confirmed {len(g['confirmed'])}, refuted {len(g['refuted'])}, not "
            f"shown {len(g['not shown'])}, not promised at export {len(g['not promised'])}; problems: {problems}"
            + ("" if not report["requirements"] else f"; requirements {'met' if report['passed'] else 'NOT met'}"))


def _finding_rows(report: dict) -> list[str]:
    out = ["| finding | cases (+/-, masked) | AUC (95% CI) | threshold | sensitivity | specificity | guarantee at this site |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in report["findings"]:
        counts = f"{f['cases']} ({f['positives']}/{f['negatives']}, {f['masked']})"
        if not f["supported"]:
            out.append(f"| {f['name']} | {counts} | {val.ci_text(f['auc'])} | unsupported | | | {f['unsupported']} |")
            continue
        g = f["guarantee_at_site"]
        said = g["verdict"] if g["verdict"] == "no target" else (
            f"{'**refuted**' if g['verdict'] == 'refuted' else g['verdict']}: {g['statistic']} >= {g['target']:g} "
            f"(bounds {_num(g['lower_bound'])} to {_num(g['upper_bound'])})"
            + ("" if g.get("promised", True) else "; not promised: the target was unsupported at export"))
        out.append(f"| {f['name']} | {counts} | {val.ci_text(f['auc'])} | {f['threshold']:.4f} ({f['criterion']}) | "
                   f"{val.ci_text(f['sensitivity'])} | {val.ci_text(f['specificity'])} | {said} |")
    return out + [""]


def _subgroup_rows(report: dict) -> list[str]:
    names = [f["name"] for f in report["findings"]]
    out = ["## Subgroups", "", f"Age bands: {', '.join(report['ci_method']['age_bands'])}. A group of fewer than "
           f"{report['ci_method']['min_subgroup']} cases is flagged small and gives counts only.", ""]
    for attr, groups in report["subgroups"].items():
        out += [f"### {attr}", "", "| group | cases | " + " | ".join(f"{n}: AUC (n, +)" for n in names) + " |",
                "| --- | --- |" + " --- |" * len(names)]
        for value, g in groups.items():
            cells = [f"{'small' if g['small'] else val.ci_text(g['findings'][n].get('auc'))} "
                     f"({g['findings'][n]['cases']}, {g['findings'][n]['positives']})" for n in names]
            out.append(f"| {value} | {g['cases']} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def findings_markdown(report: dict, paths: dict[str, Path]) -> str:
    """The summary of a multi-label validation: per finding, macro and micro, guarantees, requirements, subgroups."""
    c, s, d = report["counts"], report.get("summary"), report["data"]
    out = [f"# Validation of {Path(report['model']['bundle']).name} on site cases (findings)", "",
           f"- model SHA-256 `{report['model']['sha256'][:16]}...`, findings {', '.join(report['model']['findings'])}",
           _runtime_line(report["model"].get("runtime")),
           f"- index {d['labels']} ({d['format']}; uncertain labels: {d['uncertain']}); images under {d['images']}",
           f"- {c['cases']} cases of {c['patients']} patients; problems: "
           + (", ".join(f"{n} {k}" for k, n in sorted(c["problems"].items())) or "none"),
           "- each finding present when its calibrated probability >= its threshold; masked labels left out of that "
           "finding's figures",
           f"- 95% CIs: AUC by Newcombe's score method, proportions by Wilson; a guarantee is confirmed by the one-sided "
           f"Clopper-Pearson lower bound, refuted by the upper bound at 1 - {ml.REFUTE_ALPHA:g}/M (M findings with a "
           f"target); created {report['created']} by medge {report['medge']}", ""]
    out += [f"> **Warning:** {w}." for w in report.get("warnings", ())] + ([""] if report.get("warnings") else [])
    if not s:
        return "\n".join(out + ["No usable case: nothing could be judged.", ""])
    out += _finding_rows(report)
    out += [f"Macro AUC {_num(s['macro_auc'])} (mean of {s['macro_findings']} findings), micro AUC "
            f"{_num(s['micro_auc'])} ({s['micro_pairs']} pooled pairs); {s['note']}.", ""]
    if report["requirements"]:
        out += ["Requirements:", ""] + [
            f"- {'met' if v['passed'] else '**NOT met**'}: {v['requirement']} ({v['judged_on']} {_num(v['judged_value'])}"
            + ("" if v["passed"] else f": {v['reason']}") + ")" for v in report["requirements"]] + [""]
    out += [f"![ROC per finding]({paths['roc'].name})", ""] + _subgroup_rows(report)
    out += problem_lines(report, paths)
    return "\n".join(out)
