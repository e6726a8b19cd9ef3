"""``medge predict``: classify image files with a bundle, on numpy + OpenCV only.

Usage: medge predict --model bundles/xray scans/ extra.png --out results.jsonl

One record per input, in input order, each exactly once: path, label, class
probabilities, the model's SHA-256, timings, warnings (what is odd about the
input: tiny, near-constant, a modality, bit depth, size or statistics the model
never saw; and, on every record of a model trained on synthetic images, that) and
what the file is (format, size, bit depth, modality, decoder), or the error and
its reason. Folders are searched recursively by content: files without an
extension (PACS exports) are found, files that are not images are counted
("3 skipped: not images"; names with --verbose), and entries that cannot be
read (a folder without permission, a named pipe, a broken link) get an error
record. Non-UTF-8 file names are written as \\udcXX escapes (README).

--shard K/N keeps shard K of N of the inputs, for job arrays (SLURM, cron on
several boxes): a stable split by a hash of each file's path relative to the
folder given; the N shards' records together hold each input exactly once.

Exit status: 0 every input classified, 1 some input failed (each has its
record), 2 usage or configuration error (bad option, bad bundle), 3 a bug.
With --strict an input with warnings fails instead of being labelled.

--heatmaps DIR also writes, per classified input, DIR/<name>.heatmap.png: where the
model looked for the class it predicted, over the image it saw (see ``edge.explain``),
and the record says which file (``heatmap``). Existing files are never replaced
without --overwrite (checked before any work).

A multi-label bundle (``edge.findings``) writes, per input, each finding's probability,
decision (present, absent, or null when the finding has no threshold) and threshold, the
positive findings and the exam-level flag ``any_positive``; its CSV has the per-finding
columns of ``edge.apps.records``, and the summary counts each finding. Its heatmap explains
the most probable finding (the record's ``heatmap_finding``); ``--heatmap-finding NAME``
(repeatable, or ``all``) writes one per finding named instead, DIR/<name>.<finding>.heatmap.png,
listed in the record's ``heatmaps``.
"""
from __future__ import annotations

import argparse
import io
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from medge.edge.apps.options import add_model_arguments, add_shard_argument, add_strict_argument, load_model
from medge.edge.apps.records import FindingCounts, RecordWriter
from medge.edge.errors import MedgeError, UsageError
from medge.edge.inputs.image import write_image
from medge.edge.inputs.scanning import scan_inputs
from medge.edge.outputs import check_output_dir, check_output_file, make_output_dir, open_atomic, output_names, wrote
from medge.edge.paths import TEXT_ERRORS, shown
from medge.edge.progress import ProgressLine

HEATMAP_SUFFIX = ".heatmap.png"  # DIR/<input stem>.heatmap.png


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="classify images with a bundle (base install)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (PNG, JPEG, TIFF, BMP, DICOM) or folders")
    add_model_arguments(p)
    add_strict_argument(p)
    add_shard_argument(p)
    p.add_argument("--verbose", action="store_true", help="list the files skipped as not images")
    p.add_argument("--out", help="write records here, parent folders created (default: stdout)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="record format (default: %(default)s)")
    p.add_argument("--heatmaps", metavar="DIR",
                   help=f"also write a heatmap overlay per classified input: DIR/<name>{HEATMAP_SUFFIX} (created if missing)")
    p.add_argument("--heatmap-finding", action="append", metavar="NAME",
                   help="with --heatmaps: explain this finding (or class) instead of the predicted one, one file per "
                        f"name: DIR/<name>.<finding>{HEATMAP_SUFFIX}; repeatable; 'all': every finding")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file and --heatmaps files")
    return p


def finding_part(name: str) -> str:
    """A finding's name as part of a file name: letters, digits, ``-`` and ``_`` kept, anything else ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "finding"


def heatmap_targets(paths: list[str], heat_dir: Path, findings: list[str] | None) -> list[dict[str | None, Path]]:
    """The heatmap files of a run, distinct whatever the names (a finding whose file name part repeats another's
    gets its index).

    Args:
        paths: the inputs, in order. heat_dir: the --heatmaps folder.
        findings: the findings (classes) asked for by --heatmap-finding, or None for the predicted class's map.

    Returns:
        Per input, {finding: file} (``DIR/<name>.<finding>.heatmap.png``), or {None: ``DIR/<name>.heatmap.png``}.
    """
    if not findings:
        return [{None: heat_dir / n} for n in output_names(paths, HEATMAP_SUFFIX)]
    parts, targets = [], [{} for _ in paths]
    for i, name in enumerate(findings):
        part = finding_part(name)
        parts.append(part if part not in parts else f"{part}_{i}")
        for target, n in zip(targets, output_names(paths, f".{parts[-1]}{HEATMAP_SUFFIX}"), strict=True):
            target[name] = heat_dir / n
    return targets


def write_heatmap(pred, target: Path | dict, rec: dict, classes: list[str] | None = None) -> bool:
    """Write the overlay of a classified input; the record gets ``heatmap`` (its path, or None) and
    ``heatmap_error``. Returns False when a classified input's heatmap could not be written.

    ``classes``: a multi-label bundle's findings: the record also gets ``heatmap_finding``, the finding explained.
    ``target`` a dict (``heatmap_targets`` with findings named): one file per finding, the record's ``heatmaps``
    {finding: path or None}; ``heatmap`` and ``heatmap_finding`` are the first one's."""
    named = isinstance(target, dict) and None not in target
    if isinstance(target, dict) and not named:
        target = target[None]
    rec["heatmap"] = rec["heatmap_error"] = None
    if classes is not None or named:
        rec["heatmap_finding"] = None
    if named:
        rec["heatmaps"] = dict.fromkeys(target)
    if pred.explanation is None:  # the input failed (its error says why), or only its heatmap did (its warning)
        if pred.ok:
            rec["heatmap_error"] = next((w for w in pred.warnings if w.startswith("no heatmap: ")), "no heatmap")
        return not pred.ok
    explanations = pred.explanations if named else [pred.explanation]
    files = list(target.values()) if named else [target]
    try:
        for e, file in zip(explanations, files, strict=True):
            write_image(file, e.overlay())
            if named:
                rec["heatmaps"][list(target)[files.index(file)]] = str(file)
        rec["heatmap"] = str(files[0])
        if classes is not None or named:
            rec["heatmap_finding"] = list(target)[0] if named else classes[pred.explanation.class_index]
        return True
    except MedgeError as e:
        rec["heatmap_error"] = str(e)
        return False


@contextmanager
def _record_stream(out: Path | None):
    """--out through medge.edge.outputs (complete results only: a run cut short leaves .NAME.partial), else stdout."""
    if out is not None:
        with open_atomic(out, "w", newline="", keep_partial=True) as f:
            yield f
        return
    # A file name that is not UTF-8 is written as \udcXX (edge.paths), never a UnicodeEncodeError.
    stream = io.TextIOWrapper(sys.stdout.buffer, "utf-8", errors=TEXT_ERRORS, newline="", line_buffering=True)
    try:
        yield stream
    finally:
        stream.detach()


def run(args: argparse.Namespace) -> int:
    out = check_output_file(args.out, args.overwrite, "records") if args.out else None
    scan = scan_inputs(args.paths, args.shard)
    n = len(scan.entries)
    if args.heatmap_finding and not args.heatmaps:
        raise UsageError("--heatmap-finding needs --heatmaps DIR (where the heatmaps go)")
    heat_dir, targets, findings = None, [], None
    if args.heatmaps and not args.heatmap_finding:
        targets = heatmap_targets([e.path for e in scan.entries], Path(args.heatmaps), None)
        heat_dir = check_output_dir(args.heatmaps, "heatmaps", [t[None].name for t in targets], args.overwrite)
    model = load_model(args)
    if args.heatmap_finding:  # the findings' names are the bundle's: checked once it is loaded, still before any work
        findings = [model.classes[k] for k in model.heatmap_classes(args.heatmap_finding)]
        targets = heatmap_targets([e.path for e in scan.entries], Path(args.heatmaps), findings)
        heat_dir = check_output_dir(args.heatmaps, "heatmaps", [f.name for t in targets for f in t.values()],
                                    args.overwrite)
    if heat_dir is not None:
        model.require_heatmaps()  # exit 2 before any work for a bundle exported without them
        make_output_dir(heat_dir)
    progress = ProgressLine(n, "images")
    failed, warned, bugs, no_heatmap, written, heat_files, heat_images = 0, 0, 0, 0, 0, 0, 0
    counts = FindingCounts(model.classes) if model.findings is not None else None
    try:
        with _record_stream(out) as stream:
            writer = RecordWriter(stream, args.format, model.classes, heatmaps=heat_dir is not None,
                                  multilabel=counts is not None, heatmap_findings=findings)
            for i, pred in enumerate(predictions(model, scan, args, heatmaps=findings or heat_dir is not None)):
                rec = pred.to_record(model.sha256, model.runtime)
                if heat_dir is not None:
                    no_heatmap += not write_heatmap(pred, targets[i], rec, model.classes if counts else None)
                    files = sum(1 for f in (rec.get("heatmaps") or {"": rec["heatmap"]}).values() if f)
                    heat_files, heat_images = heat_files + files, heat_images + bool(files)
                writer.write(rec)
                written += 1
                failed += not pred.ok
                warned += bool(pred.ok and pred.warnings)
                bugs += pred.unexpected
                if counts is not None:
                    counts.add(rec)
                progress.update(f"{failed} failed")
    except KeyboardInterrupt as e:
        progress.close()
        e.add_note(interrupted_note(written, n, out))
        raise
    progress.close()
    report_summary(n, failed, warned, scan, args.verbose, args.shard)
    if counts is not None:
        print(counts.summary(), file=sys.stderr)
    if out is not None:
        wrote(out, "records")
    if heat_dir is not None:
        per_finding = f" for {heat_images} image(s)" if findings and heat_files != heat_images else ""
        print(f"{heat_files} heatmap(s){per_finding} in {shown(str(heat_dir))}"
              + (f" ({no_heatmap} could not be written)" if no_heatmap else ""), file=sys.stderr)
    if bugs:
        print(f"{bugs} input(s) hit an internal error (a bug in medge: please report it with their records)",
              file=sys.stderr)
        return 3
    return 1 if failed or no_heatmap else 0


def interrupted_note(written: int, total: int, out: Path | None) -> str:
    """What an interrupted run leaves, and how to finish the job."""
    if out is None:
        return f"{written} of {total} record(s) were written before the interrupt"
    return (f"{written} of {total} record(s) were written before the interrupt, to the .partial file named above "
            f"({shown(str(out))} itself is not written); run the command again to start over, or use "
            f"`medge batch --out FILE`, which resumes a run cut short")


def predictions(model, scan, args, heatmaps: bool = False):
    """One Prediction per scan entry, in order: entries that cannot be read get their error, the rest are run."""
    results = model.predict_iter(scan.paths, args.batch_size, args.workers, args.max_pixels, args.strict,
                                 heatmaps=heatmaps, streams=args.streams)
    for entry in scan.entries:
        yield model.error_prediction(entry.path, f"{entry.path}: {entry.error}") if entry.error else next(results)


def report_summary(n: int, failed: int, warned: int, scan, verbose: bool, shard=None) -> None:
    """The summary line on stderr, e.g. "5 input(s), 3 classified (1 with warnings), 2 failed; 3 skipped: not images"."""
    head = "" if shard is None else f"shard {shard}: "
    parts = [f"{head}{n} input(s), {n - failed} classified" + (f" ({warned} with warnings)" if warned else ""),
             f"{failed} failed"]
    print(shown(", ".join(parts) + (f"; {scan.skipped_summary()}" if scan.skipped else "")), file=sys.stderr)
    if scan.skipped and verbose:
        for path, why in scan.skipped:
            print(f"  skipped {shown(path)}: {why}", file=sys.stderr)
    elif scan.skipped:
        print("  (--verbose lists the skipped files)", file=sys.stderr)
