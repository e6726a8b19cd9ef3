"""``medge preview``: see what the model will see.

Usage: medge preview chest.png scans/ --out previews/ [--model bundles/xray]

Writes one PNG per input with four panels side by side: the original (after the
8-bit rule), blurred, CLAHE, and the final resized image the network receives,
each titled with its size and settings. Each panel fits a box of at most
PANEL_MAX_W x PANEL_PX pixels whatever the image's shape, so a 1 x 100000 image
makes a small picture, not a 22 GB one. Folders are searched by content, as for
``medge predict``. Existing preview files are refused before any work unless
--overwrite.

With --model, the bundle's own preprocessing is shown (its input size, CLAHE, ...)
and, when the bundle has heatmaps, a fifth panel: where the model looked for the
class it predicts (a multi-label bundle: its most probable finding, titled with that
finding's probability and decision; the findings and thresholds are listed on stderr).
Without, the default preprocessing.
"""
from __future__ import annotations

import argparse
import sys

from medge.edge.errors import ImageError, MedgeError
from medge.edge.inputs.formats import DEFAULT_MAX_PIXELS
from medge.edge.inputs.image import load_image, write_image
from medge.edge.inputs.scanning import scan_inputs
from medge.edge.model import Model
from medge.edge.outputs import check_output_dir, make_output_dir, output_names, wrote
from medge.edge.paths import shown
from medge.edge.preprocess import PreprocessConfig
from medge.edge.preview import render_preview


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("preview", help="write a picture of each preprocessing stage", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="folder for the preview PNGs (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace existing preview files (default: refuse)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default: %(default)s)")
    p.add_argument("--model", metavar="BUNDLE",
                   help="show what this bundle's model sees: its preprocessing, and its heatmap panel when the bundle "
                        "has heatmaps (default: the default preprocessing)")
    return p


def run(args: argparse.Namespace) -> int:
    scan = scan_inputs(args.images)
    names = output_names([e.path for e in scan.entries], ".preview.png")
    out = check_output_dir(args.out, "previews", names, args.overwrite)  # before any work, as every command that writes
    model = None
    if args.model:
        model = Model.load(args.model)
        if not model.explain_method:
            print(f"note: {args.model} has no heatmaps (exported before medge had them): no heatmap panel", file=sys.stderr)
        elif model.findings is not None:
            print(f"findings of {args.model}: " + ", ".join(
                f"{n} " + ("not decided: unsupported" if t is None else f"threshold {t:.4g}")
                for n, t in model.findings.thresholds.items()) + "; the heatmap panel explains the most probable finding",
                file=sys.stderr)
    cfg = model.preprocess_config if model else PreprocessConfig()
    print(f"preprocessing of {args.model or 'the default configuration'}: input {cfg.size}x{cfg.size}"
          + ("" if args.model else " (give --model BUNDLE to see what a model's own preprocessing does)"), file=sys.stderr)
    make_output_dir(out)
    failed = 0
    for entry, name in zip(scan.entries, names, strict=True):
        path, target = entry.path, out / name
        try:
            if entry.error:
                raise ImageError(path, entry.error)
            image, info = load_image(path, args.max_pixels)
            write_image(target, render_preview(image, cfg, info.display_range, model))
            print(shown(f"{path} -> {target}"))
        except MedgeError as e:
            failed += 1
            print(f"error: {shown(str(e))}", file=sys.stderr)
    if scan.skipped:
        print(shown(scan.skipped_summary()), file=sys.stderr)
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
    if len(scan.entries) > failed:
        wrote(out, f"{len(scan.entries) - failed} preview(s)")
    return 1 if failed else 0
