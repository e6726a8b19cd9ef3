"""``medge predict``: classify image files with a bundle, on numpy + OpenCV only.

Usage: medge predict --model bundles/xray scans/ extra.png --out results.jsonl

One record per input, in input order, each exactly once: path, label, class
probabilities, the model's SHA-256, timings, warnings (what is odd about the
input: tiny, near-constant, a modality or statistics the model never saw) and
what the file is (format, size, bit depth, modality, decoder), or the error and
its reason. Folders are searched recursively by content: files without an
extension (PACS exports) are found, files that are not images are counted
("3 skipped: not images"; names with --verbose), and entries that cannot be
read (a folder without permission, a named pipe, a broken link) get an error
record. Non-UTF-8 file names are written as \\udcXX escapes (README).

Exit status: 0 every input classified, 1 some input failed (each has its
record), 2 usage or configuration error (bad option, bad bundle), 3 a bug.
With --strict an input with warnings fails instead of being labelled.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

from medge.edge.apps.options import add_model_arguments, add_strict_argument, load_model
from medge.edge.apps.records import RecordWriter
from medge.edge.errors import UsageError
from medge.edge.inputs import scan_inputs
from medge.edge.model import Prediction
from medge.edge.paths import TEXT_ERRORS, shown


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="classify images with a bundle (base install)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (PNG, JPEG, TIFF, BMP, DICOM) or folders")
    add_model_arguments(p)
    add_strict_argument(p)
    p.add_argument("--verbose", action="store_true", help="list the files skipped as not images")
    p.add_argument("--out", help="write records here (default: stdout)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="record format (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise UsageError(f"{out}: exists already (use --overwrite to replace it)")
    model = load_model(args)
    scan = scan_inputs(args.paths)
    n = len(scan.entries)
    progress = sys.stderr.isatty()
    tmp = out.with_name(f".{out.name}.partial") if out else None
    # A file name that is not UTF-8 is written as \udcXX (edge.paths), never a UnicodeEncodeError.
    if tmp:
        stream = open(tmp, "w", encoding="utf-8", errors=TEXT_ERRORS, newline="")  # closed in the finally below
    else:
        stream = io.TextIOWrapper(sys.stdout.buffer, "utf-8", errors=TEXT_ERRORS, newline="", line_buffering=True)
    failed, warned, bugs, t0 = 0, 0, 0, time.perf_counter()
    try:
        writer = RecordWriter(stream, args.format, model.classes)
        for i, pred in enumerate(predictions(model, scan, args), 1):
            writer.write(pred.to_record(model.sha256))
            failed += not pred.ok
            warned += bool(pred.ok and pred.warnings)
            bugs += pred.unexpected
            if progress:
                print(f"\r{i}/{n} images, {failed} failed, {i / (time.perf_counter() - t0):.1f} img/s",
                      end="", file=sys.stderr, flush=True)
    finally:
        if tmp:
            stream.close()
        else:
            stream.detach()
    if tmp:
        os.replace(tmp, out)  # complete results only: a killed run leaves the .partial file
    if progress:
        print(file=sys.stderr)
    report_summary(n, failed, warned, scan, args.verbose, out)
    if bugs:
        print(f"{bugs} input(s) hit an internal error (a bug in medge: please report it with their records)",
              file=sys.stderr)
        return 3
    return 1 if failed else 0


def predictions(model, scan, args):
    """One Prediction per scan entry, in order: entries that cannot be read get their error, the rest are run."""
    results = model.predict_iter(scan.paths, args.batch_size, args.workers, args.max_pixels, args.strict)
    for entry in scan.entries:
        yield Prediction(entry.path, error=f"{entry.path}: {entry.error}") if entry.error else next(results)


def report_summary(n: int, failed: int, warned: int, scan, verbose: bool, out) -> None:
    """The summary line on stderr, e.g. "5 input(s), 3 classified (1 with warnings), 2 failed; 3 skipped: not images"."""
    parts = [f"{n} input(s), {n - failed} classified" + (f" ({warned} with warnings)" if warned else ""),
             f"{failed} failed"]
    line = ", ".join(parts) + (f"; {scan.skipped_summary()}" if scan.skipped else "")
    print(shown(line + (f"; records in {out}" if out else "")), file=sys.stderr)
    if scan.skipped and verbose:
        for path, why in scan.skipped:
            print(f"  skipped {shown(path)}: {why}", file=sys.stderr)
    elif scan.skipped:
        print("  (--verbose lists the skipped files)", file=sys.stderr)
