"""``medge predict``: classify image files with a bundle, on numpy + OpenCV only.

Usage: medge predict --model bundles/xray scans/ extra.png --out results.jsonl

One record per input, in input order, each exactly once: path, label, class
probabilities, the model's SHA-256 and timings, or the error and its reason.
Folders are searched recursively by extension. A bad input never stops the
batch; the exit status is 1 when any input failed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

from medge.edge.apps.options import add_model_arguments, load_model
from medge.edge.apps.records import RecordWriter
from medge.edge.errors import UsageError
from medge.edge.image import collect_inputs


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="classify images with a bundle (base install)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (PNG, JPEG, TIFF, BMP, DICOM) or folders")
    add_model_arguments(p)
    p.add_argument("--out", help="write records here (default: stdout)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="record format (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise UsageError(f"{out}: exists already (use --overwrite to replace it)")
    model = load_model(args)
    paths = collect_inputs(args.paths)
    progress = sys.stderr.isatty()
    tmp = out.with_name(f".{out.name}.partial") if out else None
    if tmp:
        stream = open(tmp, "w", encoding="utf-8", newline="")  # closed in the finally below
    else:
        stream = io.TextIOWrapper(sys.stdout.buffer, "utf-8", newline="", line_buffering=True)
    failed, t0 = 0, time.perf_counter()
    try:
        writer = RecordWriter(stream, args.format, model.classes)
        for i, pred in enumerate(model.predict_iter(paths, args.batch_size, args.workers, args.max_pixels), 1):
            writer.write(pred.to_record(model.sha256))
            failed += not pred.ok
            if progress:
                print(f"\r{i}/{len(paths)} images, {failed} failed, {i / (time.perf_counter() - t0):.1f} img/s",
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
    summary = f"{len(paths)} input(s), {len(paths) - failed} classified, {failed} failed"
    print(summary + (f"; records in {out}" if out else ""), file=sys.stderr)
    return 1 if failed else 0
