"""``medge predict``: classify image files with a bundle, on numpy + OpenCV only.

Usage: medge predict --model bundles/xray scans/ extra.png --out results.jsonl

One record per input, in input order, each exactly once: path, label, class
probabilities, the model's SHA-256 and timings, or the error and its reason.
Folders are searched recursively by extension. A bad input never stops the
batch; the exit status is 1 when any input failed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from medge.edge.apps.options import add_model_arguments, load_model
from medge.edge.image import collect_inputs
from medge.edge.outputs import check_output_file, open_atomic, wrote
from medge.edge.progress import ProgressLine


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="classify images with a bundle (base install)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (PNG, JPEG, TIFF, BMP, DICOM) or folders")
    add_model_arguments(p)
    p.add_argument("--out", help="write records here, parent folders created (default: stdout)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="record format (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p


class _Writer:
    def __init__(self, stream, fmt: str, classes: list[str]):
        self.stream, self.fmt, self.classes = stream, fmt, classes
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            self.csv.writerow(["path", "label", *[f"p_{c}" for c in classes], "read_ms", "preprocess_ms",
                               "inference_ms", "model_sha256", "error"])

    def write(self, rec: dict) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            p, t = rec["probabilities"] or {}, rec["timings_ms"]
            self.csv.writerow([rec["path"], rec["label"] or "", *[p.get(c, "") for c in self.classes],
                               *[round(t[k], 3) if k in t else "" for k in ("read", "preprocess", "inference")],
                               rec["model_sha256"], rec["error"] or ""])
        self.stream.flush()


@contextmanager
def _record_stream(out: Path | None):
    """--out through medge.edge.outputs (complete results only: a run cut short leaves .NAME.partial), else stdout."""
    if out is not None:
        with open_atomic(out, "w", newline="", keep_partial=True) as f:
            yield f
        return
    stream = io.TextIOWrapper(sys.stdout.buffer, "utf-8", newline="", line_buffering=True)
    try:
        yield stream
    finally:
        stream.detach()


def run(args: argparse.Namespace) -> int:
    out = check_output_file(args.out, args.overwrite, "records") if args.out else None
    model = load_model(args)
    paths = collect_inputs(args.paths)
    progress = ProgressLine(len(paths), "images")
    failed = 0
    with _record_stream(out) as stream:
        writer = _Writer(stream, args.format, model.classes)
        for pred in model.predict_iter(paths, args.batch_size, args.workers, args.max_pixels):
            writer.write(pred.to_record(model.sha256))
            failed += not pred.ok
            progress.update(f"{failed} failed")
    progress.close()
    print(f"{len(paths)} input(s), {len(paths) - failed} classified, {failed} failed", file=sys.stderr)
    if out is not None:
        wrote(out, "records")
    return 1 if failed else 0
