"""Charts of medge's validation and drift reports (ROC, reliability diagram, score histograms) as PNG images.

Drawn with numpy and OpenCV only, so that the base (edge) install writes its own reports. Only
long-standing cv2 calls are used (line, polylines, fillPoly, circle, rectangle, addWeighted, putText with
FONT_HERSHEY_SIMPLEX, getTextSize, imencode), all present in OpenCV 4.5.5 and 4.6; no cv2.plot, no matplotlib.

Usage::

    from medge.edge.golive.plots import roc_plot, write_png
    write_png("roc.png", roc_plot([{"fpr": [0, 0.1, 1], "tpr": [0, 0.8, 1], "label": "site cases"}], "ROC"))

The hazard guarded against: a chart that misleads or cannot be read by the engineer and the clinical
lead it is for. Values outside the axes are clipped to the frame (never drawn over the labels), NaN
points are skipped, every text is measured and shortened with "..." so that it stays inside the image,
and characters the Hershey font cannot draw (accents, dashes, >=) are spelled in ASCII instead of "?".
"""
from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from medge.edge.errors import UsageError
from medge.edge.outputs import atomic_write_bytes
from medge.edge.paths import shown

WIDTH, HEIGHT = 640, 560  # pixels of every chart
FONT = cv2.FONT_HERSHEY_SIMPLEX

# Colours are BGR (OpenCV's order); blue, orange, green and purple are matplotlib's tab: palette.
WHITE = (255, 255, 255)
INK = (40, 40, 40)  # text and the frame
GRID = (232, 232, 232)
BLUE = (180, 119, 31)
ORANGE = (14, 127, 255)
GREEN = (44, 160, 44)
PURPLE = (189, 103, 148)
GREY = (120, 120, 120)  # a reference curve, e.g. the bundle's own validation ROC (drawn dashed)
LIGHT_GREY = (170, 170, 170)  # the chance / perfect-calibration diagonal (drawn dotted)
RED = (40, 39, 214)  # the operating point
CURVE_COLOURS = (BLUE, GREY, ORANGE, GREEN, PURPLE)  # roc_plot: curve i gets CURVE_COLOURS[i % 5]
SERIES_COLOURS = (BLUE, ORANGE, GREEN, PURPLE)  # histogram_plot: series i gets SERIES_COLOURS[i % 4]
CALIBRATION_COLOUR = BLUE  # reliability_plot: the observed points and the line joining them

ROC_XLABEL = "1 - specificity (false positive rate)"
ROC_YLABEL = "sensitivity (true positive rate)"
RELIABILITY_XLABEL = "mean predicted probability"
RELIABILITY_YLABEL = "observed fraction positive"
HISTOGRAM_YLABEL = "fraction of values per bin"

_SHIFT = 4  # sub-pixel bits of the cv2 drawing calls: points are given in 1/16 pixel
_PATTERNS = {"dashed": (9.0, 6.0), "dotted": (2.0, 5.0)}  # (dash, gap) in pixels; "solid" has none
# Spelled out before accents are stripped; anything else outside ASCII is drawn as "?".
_ASCII = {"\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2264": "<=", "\u2265": ">=", "\u00b1": "+/-",
          "\u2026": "...", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00d7": "x",
          "\u00b5": "u", "\u03bc": "u", "\u00df": "ss", "\u00b0": " deg"}


@dataclass(frozen=True)
class Frame:
    """The plot area: its pixel box (inclusive) and the data ranges its edges stand for."""

    left: int
    top: int
    right: int
    bottom: int
    x_range: tuple[float, float] = (0.0, 1.0)
    y_range: tuple[float, float] = (0.0, 1.0)

    def with_ranges(self, x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None) -> Frame:
        """The same box standing for other data ranges (a histogram's value range and height)."""
        return replace(self, x_range=tuple(x_range or self.x_range), y_range=tuple(y_range or self.y_range))

    def to_pixels(self, xs, ys) -> tuple[np.ndarray, np.ndarray]:
        """Sub-pixel columns and rows of data points, clipped to the frame."""
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        fx = np.clip((np.asarray(xs, dtype=float) - x0) / (x1 - x0), 0.0, 1.0)
        fy = np.clip((np.asarray(ys, dtype=float) - y0) / (y1 - y0), 0.0, 1.0)
        return self.left + fx * (self.right - self.left), self.bottom - fy * (self.bottom - self.top)

    def to_pixel(self, x: float, y: float) -> tuple[int, int]:
        """The pixel (column, row) of one data point, clipped to the frame."""
        col, row = self.to_pixels(x, y)
        return int(round(float(col))), int(round(float(row)))


FRAME = Frame(left=78, top=48, right=616, bottom=412)  # the plot area of every chart (ranges (0, 1) unless a histogram's)
LEGEND_TOP = FRAME.bottom + 66  # row of the first legend entry's centre, below the x axis title
LEGEND_ROW = 20  # pixels between legend entries


@dataclass(frozen=True)
class _Font:
    scale: float
    thickness: int = 1


TITLE_FONT, LABEL_FONT, TICK_FONT, LEGEND_FONT, SMALL_FONT = _Font(0.62, 2), _Font(0.5), _Font(0.42), _Font(0.45), _Font(0.36)


@dataclass(frozen=True)
class _Key:
    """One legend entry: its text and how its sample is drawn ("solid", "dashed", "dotted", "marker", "box", "text")."""

    label: str
    colour: tuple[int, int, int] = INK
    style: str = "solid"


# --- text ---------------------------------------------------------------------------------------------------------------

def _ascii(text) -> str:
    """``text`` on one line in characters the Hershey font can draw."""
    text = " ".join(str(text).split())
    text = unicodedata.normalize("NFKD", "".join(_ASCII.get(ch, ch) for ch in text))
    return "".join(ch for ch in text if not unicodedata.combining(ch)).encode("ascii", "replace").decode("ascii")


def _size(text: str, font: _Font) -> tuple[int, int, int]:
    """Width, height above the baseline and depth below it of ``text``, in pixels."""
    (w, h), base = cv2.getTextSize(text, FONT, font.scale, font.thickness)
    return w, h, base


def _fit(text, font: _Font, max_width: int) -> str:
    """``text`` in ASCII, shortened with "..." to at most ``max_width`` pixels ("" when not even that fits)."""
    text = _ascii(text)
    if _size(text, font)[0] <= max_width:
        return text
    lo, hi = 0, len(text)  # longest prefix whose "prefix..." fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _size(text[:mid].rstrip() + "...", font)[0] <= max_width else (lo, mid - 1)
    shortened = text[:lo].rstrip() + "..."
    return shortened if _size(shortened, font)[0] <= max_width else ""


def _put(img: np.ndarray, text, x: float, baseline: float, font: _Font, colour=INK, align: str = "left",
         max_width: int | None = None) -> tuple[int, int, int, int]:
    """Draw one line of text kept inside the image; ``align`` says whether ``x`` is its left, centre or right.

    Returns its box (left, top, right, bottom) in pixels.
    """
    height, width = img.shape[:2]
    text = _fit(text, font, min(max_width or width, width - 4))
    w, h, base = _size(text, font)
    left = {"left": x, "center": x - w / 2, "right": x - w}[align]
    left = int(min(max(round(left), 2), width - 2 - w))
    baseline = int(min(max(round(baseline), h + 2), height - 2 - base))
    cv2.putText(img, text, (left, baseline), FONT, font.scale, colour, font.thickness, cv2.LINE_AA)
    return left, baseline - h, left + w, baseline + base


def _put_vertical(img: np.ndarray, text, left: int, centre_row: int, font: _Font, max_width: int) -> None:
    """Draw text reading bottom to top (a y axis title), centred on ``centre_row``."""
    text = _fit(text, font, max_width)
    w, h, base = _size(text, font)
    canvas = np.full((h + base + 4, w + 4, 3), 255, np.uint8)
    cv2.putText(canvas, text, (2, h + 2), FONT, font.scale, INK, font.thickness, cv2.LINE_AA)
    rotated = np.rot90(canvas)  # counter-clockwise: the text reads upwards
    rows, cols = rotated.shape[:2]
    top = min(max(centre_row - rows // 2, 0), img.shape[0] - rows)
    region = img[top:top + rows, left:left + cols]
    np.minimum(region, rotated[:region.shape[0], :region.shape[1]], out=region)


# --- lines ---------------------------------------------------------------------------------------------------------------

def _fixed(col: float, row: float) -> tuple[int, int]:
    """A sub-pixel point as the integers cv2 wants with ``shift=_SHIFT``."""
    return int(round(col * (1 << _SHIFT))), int(round(row * (1 << _SHIFT)))


def _dash_segments(points: np.ndarray, dash: float, gap: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The dashes along a polyline of pixel points, the pattern running on across its vertices."""
    period, phase, dashes = dash + gap, 0.0, []
    for a, b in zip(points[:-1], points[1:], strict=True):
        length = float(np.hypot(*(b - a)))
        pos = 0.0
        while pos < length:
            in_dash = phase < dash
            step = min((dash if in_dash else period) - phase, length - pos)
            if in_dash:
                dashes.append((a + (b - a) * pos / length, a + (b - a) * (pos + step) / length))
            pos, phase = pos + step, (phase + step) % period
    return dashes


def _draw_line(img: np.ndarray, frame: Frame, xs, ys, colour, thickness: int = 2, style: str = "solid") -> None:
    """Draw data points joined by an anti-aliased line (solid, dashed or dotted), clipped to the frame."""
    cols, rows = frame.to_pixels(xs, ys)
    _draw_pixels(img, np.stack([np.atleast_1d(cols), np.atleast_1d(rows)], axis=1), colour, thickness, style)


def _draw_pixels(img: np.ndarray, points: np.ndarray, colour, thickness: int, style: str) -> None:
    """Join sub-pixel points (an N x 2 array of columns and rows) with a solid, dashed or dotted line."""
    if len(points) < 2:
        return
    if style == "solid":
        fixed = np.round(points * (1 << _SHIFT)).astype(np.int32)
        cv2.polylines(img, [fixed], False, colour, thickness, cv2.LINE_AA, _SHIFT)
        return
    for a, b in _dash_segments(points, *_PATTERNS[style]):
        cv2.line(img, _fixed(*a), _fixed(*b), colour, thickness, cv2.LINE_AA, _SHIFT)


def _finite_points(xs, ys, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The points of two equally long sequences where both coordinates are numbers (None and NaN dropped)."""
    x, y = np.asarray(xs, dtype=float).ravel(), np.asarray(ys, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{what}: {x.size} x values but {y.size} y values")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _blend(colour, amount: float) -> tuple[int, int, int]:
    """``colour`` mixed with white: ``amount`` 1 is the colour itself, 0 is white."""
    return tuple(int(round(255 - (255 - c) * amount)) for c in colour)


# --- frame, axes and legend --------------------------------------------------------------------------------------------

def _tick_step(low: float, high: float, target: int = 5) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving about ``target`` intervals."""
    raw = (high - low) / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def _ticks(low: float, high: float) -> list[float]:
    """Round tick values from ``low`` to ``high`` (0, 0.2, ..., 1.0 for the unit range)."""
    step = _tick_step(low, high)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + k * step, 12) for k in range(int(math.floor((high - first) / step + 1e-9)) + 1)]


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    """A tick value with as many decimals as its step needs; zero as "0"."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = next(d for d in range(7) if abs(round(step, d) - step) <= 1e-9 * max(1.0, abs(step)))
    return "0" if abs(value) < step * 1e-9 else f"{value:.{decimals}f}"


def _canvas(title: str) -> np.ndarray:
    """A white chart with its title centred on the first line."""
    img = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    _put(img, title, WIDTH / 2, 30, TITLE_FONT, align="center", max_width=WIDTH - 20)
    return img


def _axes(img: np.ndarray, frame: Frame, xlabel: str, ylabel: str) -> None:
    """Grid, frame box, ticks with their labels and the two axis titles."""
    x_ticks, y_ticks = _ticks(*frame.x_range), _ticks(*frame.y_range)
    for t in x_ticks:
        col = frame.to_pixel(t, frame.y_range[0])[0]
        cv2.line(img, (col, frame.top), (col, frame.bottom), GRID, 1)
        cv2.line(img, (col, frame.bottom), (col, frame.bottom + 5), INK, 1)
        _put(img, _tick_label(t, x_ticks), col, frame.bottom + 21, TICK_FONT, align="center")
    for t in y_ticks:
        row = frame.to_pixel(frame.x_range[0], t)[1]
        cv2.line(img, (frame.left, row), (frame.right, row), GRID, 1)
        cv2.line(img, (frame.left - 5, row), (frame.left, row), INK, 1)
        _put(img, _tick_label(t, y_ticks), frame.left - 9, row + 6, TICK_FONT, align="right")
    cv2.rectangle(img, (frame.left, frame.top), (frame.right, frame.bottom), INK, 1)
    _put(img, xlabel, (frame.left + frame.right) / 2, frame.bottom + 46, LABEL_FONT, align="center",
         max_width=frame.right - frame.left)
    _put_vertical(img, ylabel, 8, (frame.top + frame.bottom) // 2, LABEL_FONT, frame.bottom - frame.top)


def _swatch(img: np.ndarray, key: _Key, left: int, row: int) -> None:
    """The legend's sample of a line, marker or bar, 26 pixels wide."""
    if key.style in _PATTERNS or key.style == "solid":
        _draw_pixels(img, np.array([[left, row], [left + 26, row]], float), key.colour, 2, key.style)
    if key.style == "marker":
        cv2.line(img, (left, row), (left + 26, row), key.colour, 2, cv2.LINE_AA)
        cv2.circle(img, (left + 13, row), 4, key.colour, -1, cv2.LINE_AA)
    if key.style == "box":
        cv2.rectangle(img, (left + 3, row - 6), (left + 23, row + 6), _blend(key.colour, 0.25), -1)
        cv2.rectangle(img, (left + 3, row - 6), (left + 23, row + 6), key.colour, 1)


def _legend(img: np.ndarray, keys: list[_Key], left: int = FRAME.left) -> None:
    """Legend entries one per row below the x axis title; those that do not fit become "+ N more"."""
    rows = (img.shape[0] - 8 - LEGEND_TOP) // LEGEND_ROW + 1
    if len(keys) > rows:
        keys = keys[:rows - 1] + [_Key(f"+ {len(keys) - rows + 1} more", style="text")]
    for i, key in enumerate(keys):
        row = LEGEND_TOP + i * LEGEND_ROW
        _swatch(img, key, left, row)
        _put(img, key.label, left + 36, row + 5, LEGEND_FONT, max_width=img.shape[1] - left - 44)


# --- charts -------------------------------------------------------------------------------------------------------------

def _curve_style(i: int) -> tuple[tuple[int, int, int], str]:
    """Colour and line style of the i-th ROC curve: the first strong, the grey reference dashed."""
    colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
    return colour, "dashed" if colour == GREY else "solid"


def _operating_point(img: np.ndarray, frame: Frame, point: dict) -> None:
    """A filled marker at (fpr, tpr) and its label in a white box beside it, inside the frame."""
    x, y = (float("nan") if point.get(k) is None else float(point[k]) for k in ("fpr", "tpr"))
    if not (math.isfinite(x) and math.isfinite(y)):
        return
    col, row = frame.to_pixel(x, y)
    cv2.circle(img, (col, row), 7, INK, -1, cv2.LINE_AA)
    cv2.circle(img, (col, row), 6, RED, -1, cv2.LINE_AA)
    text = _fit(point.get("label", ""), LEGEND_FONT, frame.right - frame.left - 12)
    if not text:
        return
    w, h, base = _size(text, LEGEND_FONT)
    left = col + 14 if col + 14 + w <= frame.right - 4 else max(col - 14 - w, frame.left + 6)
    baseline = row + 22 if row + 22 + base <= frame.bottom - 4 else row - 14
    cv2.rectangle(img, (left - 4, baseline - h - 4), (left + w + 4, baseline + base + 2), WHITE, -1)
    cv2.rectangle(img, (left - 4, baseline - h - 4), (left + w + 4, baseline + base + 2), _blend(RED, 0.6), 1)
    cv2.putText(img, text, (left, baseline), FONT, LEGEND_FONT.scale, INK, LEGEND_FONT.thickness, cv2.LINE_AA)


def roc_plot(curves: list[dict], title: str, operating_point: dict | None = None) -> np.ndarray:
    """Draw ROC curves, the chance diagonal and an optional operating point.

    Args:
        curves: each {"fpr": sequence, "tpr": sequence, "label": str}; the first is drawn in a strong
            colour (and on top), the second grey and dashed (a reference, e.g. the bundle's validation ROC),
            further ones in other colours (``CURVE_COLOURS``). NaN points are skipped, values outside [0, 1]
            are clipped to the frame, an empty curve draws nothing but keeps its legend entry.
        title: the chart's title line.
        operating_point: {"fpr": float, "tpr": float, "label": str}, drawn as a filled red marker
            with its label beside it; None (or a NaN coordinate) draws none.

    Returns:
        A BGR uint8 image of ``HEIGHT`` x ``WIDTH`` pixels.

    Raises:
        ValueError: a curve has different numbers of fpr and tpr values.
    """
    points = [_finite_points(c["fpr"], c["tpr"], f"ROC curve {i} ({c.get('label', '')})") for i, c in enumerate(curves)]
    img = _canvas(title)
    _axes(img, FRAME, ROC_XLABEL, ROC_YLABEL)
    _draw_line(img, FRAME, [0.0, 1.0], [0.0, 1.0], LIGHT_GREY, 1, "dotted")
    for i in reversed(range(len(curves))):  # the first curve ends on top
        colour, style = _curve_style(i)
        _draw_line(img, FRAME, *points[i], colour, 2, style)
    if operating_point is not None:
        _operating_point(img, FRAME, operating_point)
    keys = [_Key(c.get("label", f"curve {i + 1}"), *_curve_style(i)) for i, c in enumerate(curves)]
    _legend(img, keys + [_Key("chance", LIGHT_GREY, "dotted")])
    return img


def _is_filled(b: dict) -> bool:
    """Whether a reliability bin has cases and both of its means."""
    values = (b.get("mean_score"), b.get("fraction_positive"))
    return (b.get("count") or 0) > 0 and all(v is not None and math.isfinite(float(v)) for v in values)


def _bar(img: np.ndarray, frame: Frame, b: dict) -> None:
    """A pale bar over a bin's score interval, as high as its observed fraction positive."""
    if b.get("low") is None or b.get("high") is None:
        return
    (c0, c1), (r0, r1) = frame.to_pixels([b["low"], b["high"]], [0.0, b["fraction_positive"]])
    box = (int(round(c0)) + 1, int(round(r1))), (int(round(c1)) - 1, int(round(r0)))
    cv2.rectangle(img, *box, _blend(CALIBRATION_COLOUR, 0.18), -1)
    cv2.rectangle(img, *box, _blend(CALIBRATION_COLOUR, 0.4), 1)


def reliability_plot(bins: list[dict], title: str, ece: float | None = None) -> np.ndarray:
    """Draw a reliability diagram: observed fraction positive against mean predicted probability, per bin.

    Args:
        bins: each {"low", "high", "count", "mean_score", "fraction_positive"}; bins with count 0
            or a None/NaN mean are left out. Each other bin gets a pale bar over [low, high], a point
            at (mean_score, fraction_positive) joined to its neighbours, and its count written above it.
        title: the chart's title line.
        ece: the expected calibration error, shown in the legend when given.

    Returns:
        A BGR uint8 image of ``HEIGHT`` x ``WIDTH`` pixels.
    """
    used = sorted((b for b in bins if _is_filled(b)), key=lambda b: float(b["mean_score"]))
    img = _canvas(title)
    _axes(img, FRAME, RELIABILITY_XLABEL, RELIABILITY_YLABEL)
    for b in used:
        _bar(img, FRAME, b)
    _draw_line(img, FRAME, [0.0, 1.0], [0.0, 1.0], GREY, 1, "dashed")
    xs, ys = [float(b["mean_score"]) for b in used], [float(b["fraction_positive"]) for b in used]
    _draw_line(img, FRAME, xs, ys, CALIBRATION_COLOUR, 2)
    for b, x, y in zip(used, xs, ys, strict=True):
        col, row = FRAME.to_pixel(x, y)
        cv2.circle(img, (col, row), 4, CALIBRATION_COLOUR, -1, cv2.LINE_AA)
        _put(img, str(int(b["count"])), col, row - 9, SMALL_FONT, colour=(90, 90, 90), align="center")
    ece_text = f" (ECE {ece:.3f})" if ece is not None and math.isfinite(ece) else ""
    _legend(img, [_Key(f"observed, per bin{ece_text}", CALIBRATION_COLOUR, "marker"),
                  _Key("perfect calibration", GREY, "dashed"),
                  _Key("small numbers: cases in each bin", style="text")])
    return img


def _fractions(values, bins: int, value_range: tuple[float, float]) -> tuple[np.ndarray, int]:
    """The fraction of a series' numbers in each bin (values outside the range counted in the end bins), and how many."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.zeros(bins), 0
    counts, _ = np.histogram(np.clip(v, *value_range), bins=bins, range=value_range)
    return counts / v.size, int(v.size)


def _step_outline(edges: np.ndarray, fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The step outline of a histogram from its first to its last non-empty bin, down to zero at both ends."""
    full = np.flatnonzero(fractions > 0)
    if full.size == 0:
        return np.empty(0), np.empty(0)
    i0, i1 = full[0], full[-1] + 1
    xs = np.concatenate([[edges[i0]], np.repeat(edges[i0:i1 + 1], 2)[1:-1], [edges[i1]]])
    ys = np.concatenate([[0.0], np.repeat(fractions[i0:i1], 2), [0.0]])
    return xs, ys


def _fill(img: np.ndarray, frame: Frame, xs: np.ndarray, ys: np.ndarray, colour, opacity: float = 0.15) -> None:
    """Shade the area under a step outline, lightly so that overlapping series stay visible."""
    if xs.size == 0:
        return
    cols, rows = frame.to_pixels(xs, ys)
    overlay = img.copy()
    cv2.fillPoly(overlay, [np.round(np.stack([cols, rows], 1) * (1 << _SHIFT)).astype(np.int32)], colour, cv2.LINE_AA, _SHIFT)
    cv2.addWeighted(overlay, opacity, img, 1 - opacity, 0, dst=img)


def histogram_plot(series: list[dict], title: str, xlabel: str, bins: int = 20,
                   value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Draw overlaid normalised histograms as step outlines (reference scores against a site's scores).

    Args:
        series: each {"values": sequence, "label": str}; series i is drawn in ``SERIES_COLOURS[i % 4]``
            and its label gets its count of numbers, "(n=...)". NaN values are left out; values outside
            ``value_range`` are counted in the end bins. An empty series draws nothing (its label says n=0).
        title: the chart's title line.
        xlabel: the x axis title (what the values are).
        bins: the number of equal bins over ``value_range``.
        value_range: (low, high) of the x axis.

    Returns:
        A BGR uint8 image of ``HEIGHT`` x ``WIDTH`` pixels; the y axis is the fraction of each series' values per bin.

    Raises:
        ValueError: ``bins`` < 1 or an empty or non-finite ``value_range``.
    """
    low, high = (float(v) for v in value_range)
    if bins < 1 or not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"histogram_plot needs bins >= 1 and a value range low < high, not {bins} and {value_range}")
    edges = np.linspace(low, high, bins + 1)
    counted = [_fractions(s["values"], bins, (low, high)) for s in series]
    top = 1.05 * max([float(f.max()) for f, n in counted if n] or [0.0])
    y_high = 1.0 if top <= 0 else _tick_step(0.0, top) * math.ceil(top / _tick_step(0.0, top) - 1e-9)
    frame = FRAME.with_ranges((low, high), (0.0, y_high))
    img = _canvas(title)
    _axes(img, frame, xlabel, HISTOGRAM_YLABEL)
    outlines = [_step_outline(edges, f) for f, _ in counted]
    for i, (xs, ys) in enumerate(outlines):
        _fill(img, frame, xs, ys, SERIES_COLOURS[i % len(SERIES_COLOURS)])
    for i in reversed(range(len(outlines))):  # the first series ends on top
        _draw_line(img, frame, *outlines[i], SERIES_COLOURS[i % len(SERIES_COLOURS)], 2)
    _legend(img, [_Key(f"{s.get('label', f'series {i + 1}')} (n={n})", SERIES_COLOURS[i % len(SERIES_COLOURS)])
                  for i, (s, (_, n)) in enumerate(zip(series, counted, strict=True))])
    return img


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an image as a PNG file atomically (a temporary file beside it, then a rename).

    The bytes come from ``cv2.imencode`` and are written by Python, so that non-ASCII paths work
    on every platform (``cv2.imwrite`` fails on them on Windows). Missing parent folders are
    created; an existing file is replaced (callers check beforehand with ``outputs.check_output_file``).

    Args:
        path: the file to write.
        image: a uint8 image, (H, W) gray or (H, W, 3) BGR or (H, W, 4) BGRA.

    Returns:
        ``path`` as a Path.

    Raises:
        UsageError: the file cannot be written (its folder is read-only, or a file stands where a folder
            is needed); the message names the path.
        ValueError: ``image`` is not a uint8 image of 1, 3 or 4 channels.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"write_png needs a uint8 image of 1, 3 or 4 channels, not {image.dtype} {image.shape}")
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as PNG")
    try:
        return atomic_write_bytes(path, data.tobytes())
    except OSError as e:
        raise UsageError(f"{shown(path)}: cannot write the image: {e.strerror or e}") from None


def grid(images: list[np.ndarray], columns: int = 2) -> np.ndarray:
    """Charts of one size side by side, ``columns`` to a row (a blank tile fills the last row).

    Args:
        images: BGR uint8 images of one shape (``roc_plot``'s).
        columns: charts per row.

    Returns:
        One BGR uint8 image.
    """
    if not images:
        raise ValueError("grid: no chart to place")
    columns = max(1, min(columns, len(images)))
    blank = np.full_like(images[0], 255)
    tiles = list(images) + [blank] * (-len(images) % columns)
    return np.vstack([np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)])
