"""``medge preview``: see what the model will see.

Usage: medge preview chest.png scans/ --out previews/ [--model bundles/xray]

Writes one PNG per input with four panels side by side: the original (after the
8-bit rule), blurred, CLAHE, and the final resized image the network receives,
each titled with its size and settings. With --model the preprocessing is the
bundle's own (its input size, CLAHE, ...); without, the default one. Existing
preview files are refused before any work unless --overwrite.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from medge.edge.bundle import read_manifest
from medge.edge.errors import MedgeError, UsageError
from medge.edge.formats import DEFAULT_MAX_PIXELS
from medge.edge.image import collect_inputs, read_image, write_image
from medge.edge.outputs import check_output_dir, wrote
from medge.edge.preprocess import PreprocessConfig, preprocess_stages

PANEL_PX = 320  # height of each panel in the preview


def _panel(image: np.ndarray, title: str) -> np.ndarray:
    h, w = image.shape
    width = max(1, round(w * PANEL_PX / h))
    interp = cv2.INTER_AREA if h > PANEL_PX else cv2.INTER_NEAREST
    panel = cv2.resize(image, (width, PANEL_PX), interpolation=interp)
    bar = np.zeros((28, width), np.uint8)
    cv2.putText(bar, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, 255, 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def render_preview(image: np.ndarray, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Return the side-by-side uint8 picture of the preprocessing stages under ``cfg``, each panel titled
    with what it shows (the last one with the network's input size and channels)."""
    s = preprocess_stages(image, cfg)
    h, w = s["gray"].shape
    channels = "" if cfg.channels == 1 else f", gray x{cfg.channels}"
    panels = [
        _panel(s["gray"], f"original {w}x{h}"),
        _panel(s["blurred"], f"blur {cfg.blur_ksize}x{cfg.blur_ksize}"),
        _panel(s["clahe"], f"CLAHE {cfg.clahe_clip_limit:g}, {cfg.clahe_tile_grid}x{cfg.clahe_tile_grid}"),
        _panel(s["resized"], f"model input {cfg.size}x{cfg.size}{channels}"),
    ]
    gap = np.full((PANEL_PX + 28, 8), 128, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return np.hstack(row)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("preview", help="write a picture of each preprocessing stage", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="folder for the preview PNGs (created if missing)")
    p.add_argument("--model", metavar="BUNDLE",
                   help="show what this bundle's model sees (its preprocessing); default: the default preprocessing")
    p.add_argument("--overwrite", action="store_true", help="replace existing preview files (default: refuse)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default: %(default)s)")
    return p


def plan_targets(inputs: list[str], out: Path) -> list[Path]:
    """One preview file per input, OUT/<stem>.preview.png, numbered when two inputs share a name."""
    used, targets = set(), []
    for path in inputs:
        stem = Path(path).stem
        name, i = f"{stem}.preview.png", 1
        while name in used:  # two inputs with the same name in different folders
            name, i = f"{stem}.{i}.preview.png", i + 1
        used.add(name)
        targets.append(out / name)
    return targets


def run(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out, "previews")
    cfg = PreprocessConfig.from_dict(read_manifest(args.model)["preprocess"]) if args.model else PreprocessConfig()
    inputs = collect_inputs(args.images)
    targets = plan_targets(inputs, out)
    existing = [t for t in targets if t.exists()]
    if existing and not args.overwrite:  # before any work, as every command that writes
        shown = ", ".join(str(t) for t in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise UsageError(f"{len(existing)} preview file(s) exist already: {shown} (use --overwrite to replace them)")
    print(f"preprocessing of {args.model or 'the default configuration'}: input {cfg.size}x{cfg.size}"
          + ("" if args.model else " (give --model BUNDLE to see what a model's own preprocessing does)"), file=sys.stderr)
    failed = 0
    for path, target in zip(inputs, targets, strict=True):
        try:
            write_image(target, render_preview(read_image(path, args.max_pixels), cfg))
            print(f"{path} -> {target}")
        except MedgeError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
    if len(inputs) > failed:
        wrote(out, f"{len(inputs) - failed} preview(s)")
    return 1 if failed else 0
