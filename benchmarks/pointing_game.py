"""Pointing game: does the heatmap's hottest pixel fall on a lesion? (Zhang et al. 2016, arXiv:1608.00507)

Usage: python -m medge.benchmarks.pointing_game --model runs/demo/bundle --data runs/demo/data --out pointing.json

On a ``medge synth`` data set, whose generator records where it drew each lesion (its lesion
index, ``lesions.jsonl``: centre and radius in pixels), every image of the split that has lesions is
explained on the edge (``Model.explain``) for the lesion class, ``disease``. A hit is a hottest
pixel within ``radius + tolerance`` of a lesion's centre; the tolerance is 15 px at 224 (the
original game's), i.e. 15/224 of the image side. Two baselines say what the figure is worth:
a uniformly random point (its expected hit rate is the share of the image within reach of a
lesion) and the one fixed point that hits most often on the *train* split's lesions (the
"where lesions usually are" prior). ``--example`` draws one case (the first hit, else the
first image): the model input, the overlay, the recorded lesions (green) and the hottest pixel (white cross).
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from medge.benchmarks.common import add_out_arguments, check_outputs, environment, research_parser, save_record
from medge.edge.errors import UsageError
from medge.edge.inputs.image import read_image
from medge.edge.inputs.scanning import scan_inputs
from medge.edge.model import Model
from medge.edge.numeric import latency_summary
from medge.edge.outputs import atomic_write_bytes, wrote
from medge.train.synth import DrawnImage, Lesion, index_key, read_lesion_index

TOLERANCE_FRACTION = 15 / 224  # of the image side: the original pointing game's 15 px at 224
LESION_CLASS = "disease"


def hottest_point(heatmap: np.ndarray, width: int, height: int) -> tuple[float, float] | None:
    """The heatmap's maximum in image pixels (x, y), or None for an empty map (no evidence anywhere)."""
    if not heatmap.any():
        return None
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    h, w = heatmap.shape
    return (x + 0.5) * width / w - 0.5, (y + 0.5) * height / h - 0.5  # pixel centres, as cv2.resize aligns them


def is_hit(point: tuple[float, float] | None, lesions: list[Lesion], tolerance_px: float) -> bool:
    return point is not None and any(np.hypot(point[0] - les.x, point[1] - les.y) <= les.radius + tolerance_px
                                     for les in lesions)


def reach_mask(lesions: list[Lesion], width: int, height: int, tolerance_px: float) -> np.ndarray:
    """Pixels from which a point would count as a hit."""
    yy, xx = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), bool)
    for les in lesions:
        mask |= np.hypot(xx - les.x, yy - les.y) <= les.radius + tolerance_px
    return mask


def lesion_cases(data: Path, split: str, index: dict[str, DrawnImage]) -> list[tuple[str, DrawnImage]]:
    """(image path, what was drawn) for every image of ``split`` whose entry in the lesion index has a lesion.

    The split's folder is scanned as ``medge predict`` scans it, so that an image removed from it is not scored."""
    root = data / split
    if not root.is_dir():
        raise UsageError(f"{root}: no such split folder (expected a medge synth data set)")
    cases = []
    for path in scan_inputs([root]).paths:
        drawn = index.get(index_key(data, path))
        if drawn is not None and drawn.lesions:
            cases.append((path, drawn))
    return cases


def prior_point(data: Path, index: dict[str, DrawnImage], size: tuple[int, int],
                tolerance_frac: float) -> tuple[float, float] | None:
    """The single point (as a fraction of width, height) within reach of the most train-split lesions."""
    cases = lesion_cases(data, "train", index) if (data / "train").is_dir() else []
    if not cases:
        return None
    w, h = size
    votes = np.zeros((h, w))
    for _, drawn in cases:
        sx, sy = w / drawn.size[0], h / drawn.size[1]
        scaled = [Lesion(les.x * sx, les.y * sy, les.radius * sx) for les in drawn.lesions]
        votes += reach_mask(scaled, w, h, tolerance_frac * w)
    y, x = np.unravel_index(int(np.argmax(votes)), votes.shape)
    return (x + 0.5) / w, (y + 0.5) / h


def draw_example(e, lesions: list[Lesion], width: int, height: int, point, path: str) -> None:
    """Model input | overlay with the recorded lesions (green circles) and the hottest pixel (white cross)."""
    s = e.image.shape[0]
    scale = 2 if s < 200 else 1  # a small model input is shown at twice its size
    base = cv2.resize(cv2.cvtColor(e.image, cv2.COLOR_GRAY2BGR), (s * scale, s * scale), interpolation=cv2.INTER_NEAREST)
    over = e.overlay(base)
    k = s * scale / width
    for les in lesions:
        cv2.circle(over, (round(les.x * k), round(les.y * k)), max(1, round(les.radius * k)), (0, 255, 0), 1, cv2.LINE_AA)
    if point is not None:
        cv2.drawMarker(over, (round(point[0] * k), round(point[1] * k)), (255, 255, 255), cv2.MARKER_CROSS, 12, 2)
    ok, png = cv2.imencode(".png", np.hstack([base, np.full((s * scale, 6, 3), 255, np.uint8), over]),
                           [cv2.IMWRITE_PNG_COMPRESSION, 9])  # small enough to commit beside the README
    atomic_write_bytes(path, png.tobytes())


def run_pointing_game(bundle: str, data: str, split: str = "test", tolerance_frac: float = TOLERANCE_FRACTION,
                      example: str | None = None, method: str | None = None, log=print) -> dict:
    """Explain every lesion image of the split for the lesion class; hit rate, baselines, per-image results.

    ``method``: None = the bundle's heatmap method; "occlusion" to compare on the same model."""
    model = Model.load(bundle)
    if method is None:
        model.require_heatmaps()
    if LESION_CLASS not in model.classes:
        raise UsageError(f"{bundle}: no {LESION_CLASS!r} class among {model.classes}")
    k = model.classes.index(LESION_CLASS)
    index = read_lesion_index(data)
    cases = lesion_cases(Path(data), split, index)
    if not cases:
        raise UsageError(f"{data}/{split}: no image with a lesion in {data}'s lesion index")
    prior = prior_point(Path(data), index, cases[0][1].size, tolerance_frac)
    results, times, best_example = [], [], None
    for path, drawn in cases:
        lesions = list(drawn.lesions)
        image = read_image(path)
        height, width = image.shape[:2]
        tol = tolerance_frac * width
        t0 = time.perf_counter()
        e = model.explain(image, class_index=k, method=method)
        times.append(1000 * (time.perf_counter() - t0))
        point = hottest_point(e.heatmap, width, height)
        hit = is_hit(point, lesions, tol)
        prior_hit = prior is not None and is_hit((prior[0] * width, prior[1] * height), lesions, tol)
        results.append({"path": path, "hit": hit, "point": point, "lesions": [les.__dict__ for les in lesions],
                        "predicted": model.classes[int(np.argmax(e.logits))], "random_hit_rate":
                        float(reach_mask(lesions, width, height, tol).mean()), "prior_hit": prior_hit})
        if example and (best_example is None or (hit and not best_example[-1])):  # the first hit, else the first case
            best_example = (e, lesions, width, height, point, hit)
    n = len(results)
    record = {
        "benchmark": "medge pointing game", "bundle": str(bundle), "arch": model.manifest["model"]["arch"],
        "method": method or model.explain_method, "input_size": model.chw[1], "data": str(data), "split": split,
        "class": LESION_CLASS, "tolerance_fraction": tolerance_frac, "images": n,
        "hits": sum(r["hit"] for r in results), "hit_rate": sum(r["hit"] for r in results) / n,
        "random_point_hit_rate": float(np.mean([r["random_hit_rate"] for r in results])),
        "prior_point": prior, "prior_point_hit_rate": float(np.mean([r["prior_hit"] for r in results])),
        "classified_as_disease": sum(r["predicted"] == LESION_CLASS for r in results),
        "explain_ms": latency_summary(times), "results": results, "env": environment(),
    }
    if example and best_example is not None:
        draw_example(*best_example[:-1], example)
        record["example"] = example
    log(f"pointing game: {record['hits']}/{n} hits ({record['hit_rate']:.1%}); random point "
        f"{record['random_point_hit_rate']:.1%}, train-prior point {record['prior_point_hit_rate']:.1%}")
    return record


def markdown(rec: dict) -> str:
    """One table row per record (timings are in ``heatmap_cost``: this is about where, not how fast)."""
    return (f"| model | heatmap | {rec['split']} images with lesions | pointing-game hits | random point | "
            f"train-prior point |\n| --- | --- | ---: | ---: | ---: | ---: |\n"
            f"| {rec['arch']} at {rec['input_size']} px | {rec['method']} | {rec['images']} | "
            f"{rec['hits']} ({rec['hit_rate']:.1%}) | {rec['random_point_hit_rate']:.1%} | {rec['prior_point_hit_rate']:.1%} |")


def main(argv=None) -> int:
    p = research_parser(__doc__)
    p.add_argument("--model", required=True, metavar="BUNDLE", help="bundle with heatmaps")
    p.add_argument("--data", required=True, help="a medge synth data set (with its lesion index, lesions.jsonl)")
    p.add_argument("--split", default="test", help="split to score (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE_FRACTION,
                   help="hit tolerance beyond the lesion's radius, as a fraction of the image side (default: 15/224)")
    p.add_argument("--example", metavar="PNG",
                   help="also draw one case (the first hit, else the first): model input | overlay, lesions, hottest pixel")
    p.add_argument("--method", choices=["occlusion"], help="explain by occlusion instead of the bundle's method")
    add_out_arguments(p)
    a = p.parse_args(argv)
    status = check_outputs("pointing_game", a.overwrite, {"record": a.out, "example picture": a.example})
    if status:
        return status
    rec = run_pointing_game(a.model, a.data, a.split, a.tolerance, a.example, a.method)
    print(markdown(rec))
    save_record(rec, a.out)
    if a.example:
        wrote(a.example, "example")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
