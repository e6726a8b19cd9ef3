"""The preprocessing stages drawn side by side: what a model sees of an image (``medge preview``, ``medge serve``'s page).

Panels: the original (after the 8-bit rule), blurred, CLAHE, and the resized image the network
receives, each titled with its size and settings; with a model that has heatmaps, a fifth: where
it looked for the class it predicts. Each panel fits a box of at most PANEL_MAX_W x PANEL_PX
pixels whatever the image's shape, so a 1 x 100000 image makes a small picture, not a 22 GB one.

Kept out of ``edge.preprocess`` (which training imports): the heatmap panel needs the model's
forward pass, and the runtime imports ``edge.preprocess``.

Usage:
    picture = render_preview(image, model.preprocess_config, display_range, model=model)  # uint8, gray or BGR
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from medge.edge.explain import Explanation
from medge.edge.numeric import softmax
from medge.edge.preprocess import PreprocessConfig, preprocess_stages

if TYPE_CHECKING:
    from medge.edge.model import Model

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


def predicted_heatmap(tensor: np.ndarray, model: Model) -> tuple[Explanation, float]:
    """The heatmap of one preprocessed input (C, H, W) for the class the model predicts, and that class's
    probability: as ``medge predict`` labels it (the bundle's operating point: calibrated probabilities and
    its threshold; argmax of the softmax for bundles without one)."""
    logits, (e,) = model.explain_blob(tensor[None], model.label_indices)
    op = model.operating_point
    if model.findings is not None:  # a multi-label bundle: the most probable finding, its own calibrated sigmoid
        probabilities = model.findings.probabilities(logits)
    else:
        probabilities = softmax(logits) if op is None else op.probabilities(logits)
    return e, float(probabilities[0, e.class_index])


def _heatmap_panel(tensor: np.ndarray, model: Model) -> np.ndarray:
    """The bundle's heatmap for the class it predicts, over the model input (the preview's own tensor); for a
    multi-label bundle, its most probable finding and that finding's decision."""
    e, p = predicted_heatmap(tensor, model)
    name = model.classes[e.class_index]
    if model.findings is not None:
        threshold = model.findings.thresholds[name]
        said = "not decided" if threshold is None else "present" if p >= threshold else "absent"
        return _panel(e.overlay(), f"{e.method}: {name} {p:.2f} {said}")
    return _panel(e.overlay(), f"{e.method}: {name} {p:.2f}")


def render_preview(image: np.ndarray, cfg: PreprocessConfig = PreprocessConfig(),
                   display_range: tuple[float, float] | None = None, model: Model | None = None) -> np.ndarray:
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
