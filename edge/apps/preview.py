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
class it predicts. Without, the default preprocessing.
"""
from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np

from medge.edge.errors import ImageError, MedgeError
from medge.edge.inputs.formats import DEFAULT_MAX_PIXELS
from medge.edge.inputs.image import load_image, write_image
from medge.edge.inputs.scanning import scan_inputs
from medge.edge.model import Model
from medge.edge.numeric import softmax
from medge.edge.outputs import check_output_dir, make_output_dir, output_names, wrote
from medge.edge.paths import shown
from medge.edge.preprocess import PreprocessConfig, preprocess_stages

PANEL_PX = 320  # height of each panel in the preview
PANEL_MAX_W = 4 * PANEL_PX  # width of each panel at most: the canvas is bounded for any aspect ratio
TITLE_MIN_W = 240  # a panel is padded to at least this width so that its title fits


def _panel(image: np.ndarray, title: str) -> np.ndarray:
    """The image (gray or BGR) scaled to fit PANEL_MAX_W x PANEL_PX (aspect kept, grey padding), under a title bar."""
    h, w = image.shape[:2]
    scale = min(PANEL_PX / h, PANEL_MAX_W / w)
    size = (min(PANEL_MAX_W, max(1, round(w * scale))), min(PANEL_PX, max(1, round(h * scale))))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    scaled = cv2.resize(image, size, interpolation=interp)
    width = max(size[0], TITLE_MIN_W)
    panel = np.full((PANEL_PX, width, *image.shape[2:]), 128, np.uint8)
    top, left = (PANEL_PX - size[1]) // 2, (width - size[0]) // 2
    panel[top : top + size[1], left : left + size[0]] = scaled
    bar = np.zeros((28, width, *image.shape[2:]), np.uint8)
    cv2.putText(bar, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def _heatmap_panel(tensor: np.ndarray, model) -> np.ndarray:
    """The bundle's heatmap for the class it predicts, over the model input (the preview's own tensor)."""
    logits, (e,) = model.explain_blob(tensor[None])
    p = softmax(logits)[0, e.class_index]
    return _panel(e.overlay(), f"{e.method}: {model.classes[e.class_index]} {p:.2f}")


def render_preview(image: np.ndarray, cfg: PreprocessConfig = PreprocessConfig(),
                   display_range: tuple[float, float] | None = None, model=None) -> np.ndarray:
    """Return the side-by-side uint8 picture of the preprocessing stages (at most 5 x PANEL_MAX_W wide).

    Gray; BGR when ``model`` (an ``edge.model.Model``) has heatmaps: a last panel then shows its
    heatmap for the class it predicts over the model input (``cfg`` should be its PreprocessConfig).
    """
    s = preprocess_stages(image, cfg, display_range)
    h, w = s["gray"].shape
    channels = "" if cfg.channels == 1 else f", gray x{cfg.channels}"
    panels = [
        _panel(s["gray"], f"original {w}x{h}"),
        _panel(s["blurred"], f"blur {cfg.blur_ksize}x{cfg.blur_ksize}"),
        _panel(s["clahe"], f"CLAHE {cfg.clahe_clip_limit:g}, {cfg.clahe_tile_grid}x{cfg.clahe_tile_grid}"),
        _panel(s["resized"], f"model input {cfg.size}x{cfg.size}{channels}"),
    ]
    if model is not None and model.explain_method:
        panels = [cv2.cvtColor(p, cv2.COLOR_GRAY2BGR) for p in panels] + [_heatmap_panel(s["tensor"], model)]
    gap = np.full((PANEL_PX + 28, 8, *panels[0].shape[2:]), 128, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return np.hstack(row)


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
