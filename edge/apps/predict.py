"""``medge predict``: classify image files with a bundle, on numpy + OpenCV only.

Usage: medge predict --model bundles/xray scans/ extra.png --out results.jsonl
       medge predict --model bundles/xray scans/ --heatmaps heatmaps/

One record per input, in input order, each exactly once: path, label, class
probabilities, the model's SHA-256 and timings, or the error and its reason.
Folders are searched recursively by extension. A bad input never stops the
batch; the exit status is 1 when any input failed, 0 otherwise.

--heatmaps DIR also writes, per classified input, DIR/<name>.heatmap.png: where the
model looked for the class it predicted, over the image it saw (see ``edge.explain``),
and the record says which file (``heatmap``). Existing files are never replaced
without --overwrite (checked before any work).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

from medge.edge.apps.options import (
    add_model_arguments,
    check_output_folder,
    load_model,
    make_folder,
    output_names,
    write_image_atomic,
)
from medge.edge.errors import MedgeError, UsageError
from medge.edge.image import collect_inputs

HEATMAP_SUFFIX = ".heatmap.png"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="classify images with a bundle (base install)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (PNG, JPEG, TIFF, BMP, DICOM) or folders")
    add_model_arguments(p)
    p.add_argument("--out", help="write records here (default: stdout)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="record format (default: %(default)s)")
    p.add_argument("--heatmaps", metavar="DIR",
                   help=f"also write a heatmap overlay per classified input: DIR/<name>{HEATMAP_SUFFIX} (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file and --heatmaps files")
    return p


class _Writer:
    def __init__(self, stream, fmt: str, classes: list[str], heatmaps: bool = False):
        self.stream, self.fmt, self.classes, self.heatmaps = stream, fmt, classes, heatmaps
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            self.csv.writerow(["path", "label", *[f"p_{c}" for c in classes], "read_ms", "preprocess_ms",
                               "inference_ms", "model_sha256", "error", *(["heatmap"] if heatmaps else [])])

    def write(self, rec: dict) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            p, t = rec["probabilities"] or {}, rec["timings_ms"]
            self.csv.writerow([rec["path"], rec["label"] or "", *[p.get(c, "") for c in self.classes],
                               *[round(t[k], 3) if k in t else "" for k in ("read", "preprocess", "inference")],
                               rec["model_sha256"], rec["error"] or "", *([rec["heatmap"] or ""] if self.heatmaps else [])])
        self.stream.flush()


def write_heatmap(pred, target: Path, rec: dict) -> bool:
    """Write the overlay of a classified input; the record gets ``heatmap`` (its path, or None) and
    ``heatmap_error``. Returns False when a classified input's heatmap could not be written."""
    rec["heatmap"] = rec["heatmap_error"] = None
    if pred.explanation is None:  # the input failed: its error says why
        return True
    try:
        write_image_atomic(target, pred.explanation.overlay())
        rec["heatmap"] = str(target)
        return True
    except MedgeError as e:
        rec["heatmap_error"] = str(e)
        return False


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise UsageError(f"{out}: exists already (use --overwrite to replace it)")
    paths = collect_inputs(args.paths)
    heat_dir = Path(args.heatmaps) if args.heatmaps else None
    if heat_dir is not None:
        targets = [heat_dir / n for n in output_names(paths, HEATMAP_SUFFIX)]
        check_output_folder(heat_dir, [t.name for t in targets], args.overwrite, "--heatmaps")
    model = load_model(args)
    if heat_dir is not None:
        model.require_heatmaps()  # exit 2 before any work for a bundle exported without them
        make_folder(heat_dir)
    progress = sys.stderr.isatty()
    tmp = out.with_name(f".{out.name}.partial") if out else None
    if tmp:
        stream = open(tmp, "w", encoding="utf-8", newline="")  # closed in the finally below
    else:
        stream = io.TextIOWrapper(sys.stdout.buffer, "utf-8", newline="", line_buffering=True)
    failed, no_heatmap, t0 = 0, 0, time.perf_counter()
    try:
        writer = _Writer(stream, args.format, model.classes, heat_dir is not None)
        results = model.predict_iter(paths, args.batch_size, args.workers, args.max_pixels, heatmaps=heat_dir is not None)
        for i, pred in enumerate(results, 1):
            rec = pred.to_record(model.sha256)
            if heat_dir is not None:
                no_heatmap += not write_heatmap(pred, targets[i - 1], rec)
            writer.write(rec)
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
    if heat_dir is not None:
        summary += f", {len(paths) - failed - no_heatmap} heatmap(s) in {heat_dir}" + (
            f" ({no_heatmap} could not be written)" if no_heatmap else "")
    print(summary + (f"; records in {out}" if out else ""), file=sys.stderr)
    return 1 if failed or no_heatmap else 0
