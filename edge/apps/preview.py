"""``medge preview``: see what the model will see.

Usage: medge preview chest.png scans/ --out previews/
       medge preview chest.png --out previews/ --model bundles/xray

Writes one PNG per input with four panels side by side: the original (after the
8-bit rule), blurred, CLAHE, and the final resized image the network receives.
With --model, the bundle's own preprocessing is shown and, when the bundle has
heatmaps, a fifth panel: where the model looked for the class it predicts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from medge.edge.errors import ImageError, MedgeError
from medge.edge.formats import DEFAULT_MAX_PIXELS
from medge.edge.image import collect_inputs, read_image, write_image
from medge.edge.model import Model
from medge.edge.preprocess import PreprocessConfig, preprocess_stages
from medge.edge.runtime import softmax

PANEL_PX = 320  # height of each panel in the preview


def _panel(image: np.ndarray, title: str) -> np.ndarray:
    h, w = image.shape[:2]
    width = max(1, round(w * PANEL_PX / h))
    interp = cv2.INTER_AREA if h > PANEL_PX else cv2.INTER_NEAREST
    panel = cv2.resize(image, (width, PANEL_PX), interpolation=interp)
    bar = np.zeros((28, *panel.shape[1:]), np.uint8)
    cv2.putText(bar, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def _heatmap_panel(image: np.ndarray, model) -> np.ndarray:
    e = model.explain(image)
    p = softmax(e.logits[None])[0, e.class_index]
    return _panel(e.overlay(), f"{e.method}: {model.classes[e.class_index]} {p:.2f}")


def render_preview(image: np.ndarray, cfg: PreprocessConfig = PreprocessConfig(), model=None) -> np.ndarray:
    """Return the side-by-side uint8 picture of the preprocessing stages (gray; BGR with a heatmap panel).

    With ``model`` (an ``edge.model.Model``) whose bundle has heatmaps, a last panel shows its
    heatmap for the class it predicts over the model input; ``cfg`` should then be its PreprocessConfig.
    """
    s = preprocess_stages(image, cfg)
    h, w = s["gray"].shape
    panels = [
        _panel(s["gray"], f"original {w}x{h}"),
        _panel(s["blurred"], f"blur {cfg.blur_ksize}x{cfg.blur_ksize}"),
        _panel(s["clahe"], f"CLAHE {cfg.clahe_clip_limit:g}, {cfg.clahe_tile_grid}x{cfg.clahe_tile_grid}"),
        _panel(s["resized"], f"model input {cfg.size}x{cfg.size}"),
    ]
    if model is not None and model.explain_method:
        panels = [cv2.cvtColor(p, cv2.COLOR_GRAY2BGR) for p in panels] + [_heatmap_panel(image, model)]
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
                   help="use this bundle's preprocessing and add its heatmap panel (when the bundle has heatmaps)")
    return p


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    model = None
    if args.model:
        model = Model.load(args.model)
        if not model.explain_method:
            print(f"note: {args.model} has no heatmaps (exported before medge had them): no heatmap panel", file=sys.stderr)
    cfg = model.preprocess_config if model else PreprocessConfig()
    out.mkdir(parents=True, exist_ok=True)
    failed, used = 0, set()
    for path in collect_inputs(args.images):
        stem = Path(path).stem
        name, i = f"{stem}.preview.png", 1
        while name in used:  # two inputs with the same name in different folders
            name, i = f"{stem}.{i}.preview.png", i + 1
        used.add(name)
        target = out / name
        try:
            if target.exists() and not args.overwrite:
                raise ImageError(target, "exists already (use --overwrite to replace it)")
            write_image(target, render_preview(read_image(path, args.max_pixels), cfg, model))
            print(f"{path} -> {target}")
        except MedgeError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0
