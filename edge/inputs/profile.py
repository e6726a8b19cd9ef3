"""Is this input what the model was made for? Checks every input before it is labelled.

A classifier gives a confident label to anything: a blank image, a 1x1 image, a
segmentation mask, a CT slice given to a chest X-ray model. So every input is
checked, and what is odd about it goes into its record's ``warnings`` (a list,
empty when nothing is); with ``--strict`` a warning refuses the input instead.

Intrinsic checks (every bundle, with or without a profile):
  - refused: a uniform image (every pixel one value: nothing to classify), and
    DICOM objects whose pixels are not a picture of a patient (``SEG`` masks,
    ``RTDOSE`` grids, ...), unless the training data had that modality;
  - warned: near-constant (contrast below ``MIN_STD`` grey levels), binary (two
    grey levels: a mask or a drawing); and, when the bundle has no profile to
    compare sizes with, tiny (shorter side < ``TINY_PX``) and extreme aspect
    ratio (> ``MAX_ASPECT``).

Against the training data (bundles exported from a checkpoint that has a
``data_profile``: what training saw, recorded by ``medge train``):
  - a DICOM modality, bit depth or photometric interpretation never seen;
  - an image much smaller than, or shaped unlike, every training image;
  - brightness or contrast, before and after CLAHE, far outside the training
    range: outside [p1 - m, p99 + m] of the training values, where the margin m
    is a quarter of the p1..p99 spread, at least ``MIN_MARGIN`` grey levels.

The same ``image_stats`` runs in training (``medge.train.data``) and at the
edge, on the same preprocessing stages.
"""
from __future__ import annotations

import cv2
import numpy as np

from medge.edge.errors import ImageError
from medge.edge.inputs.formats import ImageInfo

PROFILE_VERSION = 1
TINY_PX = 128  # shorter side below this: warned (a radiograph is hundreds of pixels across), without a profile
MAX_ASPECT = 4.0  # longer / shorter side above this: warned
MIN_STD = 2.0  # grey levels: below this standard deviation (8-bit image) an image is near-constant
MIN_MARGIN = 10.0  # grey levels: the least margin around the training range of a statistic
STATS = {  # name -> what a radiographer would call it
    "gray_mean": "mean brightness",
    "gray_std": "contrast (standard deviation of grey levels)",
    "input_mean": "mean brightness after CLAHE",
    "input_std": "contrast after CLAHE",
}
# Modalities whose pixels are not a picture of a patient (DICOM PS3.3 C.7.3.1.1.1).
NON_IMAGE_MODALITIES = {"SEG": "a segmentation mask", "RTDOSE": "a radiotherapy dose grid",
                        "RTSTRUCT": "an RT structure set", "RTPLAN": "an RT plan", "SR": "a structured report",
                        "PR": "a presentation state", "KO": "a key-object selection", "REG": "a registration"}


def image_stats(gray: np.ndarray, resized: np.ndarray) -> dict:
    """Statistics of one image's preprocessing stages (``edge.preprocess.preprocess_stages``).

    Args:
        gray: the full-size 8-bit image (after the 8-bit rule, before the blur).
        resized: the model's input before normalisation (after CLAHE and resize).

    Returns:
        dict of float: gray_mean, gray_std, input_mean, input_std (grey levels), and levels
        (the number of distinct grey levels of ``gray``).
    """
    mean, std = cv2.meanStdDev(gray)
    hist = cv2.calcHist([gray], [0], None, [256], [0, 256])
    rmean, rstd = cv2.meanStdDev(resized)
    return {"gray_mean": float(mean[0, 0]), "gray_std": float(std[0, 0]), "input_mean": float(rmean[0, 0]),
            "input_std": float(rstd[0, 0]), "levels": int(np.count_nonzero(hist))}


def _summary(values) -> dict:
    v = np.sort(np.asarray(values, np.float64))
    q = lambda p: float(v[int(round(p / 100 * (len(v) - 1)))])  # nearest rank
    return {"min": float(v[0]), "p01": q(1), "p50": q(50), "p99": q(99), "max": float(v[-1])}


def _counts(values) -> dict:
    out: dict[str, int] = {}
    for v in values:
        if v is not None:
            out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


def build_profile(items: list[tuple[dict, dict]]) -> dict | None:
    """What a training set looks like, from (``ImageInfo.to_dict()``, ``image_stats``) of each image.

    Returns:
        the ``data_profile`` saved in checkpoints and bundle manifests (JSON-ready),
        or None for no images.
    """
    if not items:
        return None
    infos = [i for i, _ in items]
    short = [min(i["width"], i["height"]) for i in infos]
    aspect = [max(i["width"], i["height"]) / max(1, min(i["width"], i["height"])) for i in infos]
    return {
        "version": PROFILE_VERSION,
        "images": len(items),
        "width": _summary([i["width"] for i in infos]),
        "height": _summary([i["height"] for i in infos]),
        "short_side": _summary(short),
        "aspect": _summary(aspect),
        "bits": _counts(i["bits"] for i in infos),
        "photometric": _counts(i["photometric"] for i in infos),
        "formats": _counts(i["format"] for i in infos),
        "modalities": _counts(i.get("modality") for i in infos),
        "stats": {k: _summary([s[k] for _, s in items]) for k in STATS},
    }


def check_input(info: ImageInfo, stats: dict, profile: dict | None = None, path=None) -> list[str]:
    """Warnings for one input (module docstring); raises ImageError for what must not be labelled.

    Args:
        info: what the file is (``edge.inputs.image.load_image``).
        stats: ``image_stats`` of its preprocessing stages.
        profile: the bundle's ``data_profile``; None checks the intrinsic rules only.
        path: named in the error.

    Returns:
        list of warnings, in words; empty when nothing is odd.
    """
    trained_modalities = set((profile or {}).get("modalities") or {})
    if info.modality in NON_IMAGE_MODALITIES and info.modality not in trained_modalities:
        raise ImageError(path, f"this DICOM is {NON_IMAGE_MODALITIES[info.modality]} (modality {info.modality}), "
                               "not an image of a patient: nothing to classify")
    if stats["levels"] <= 1:
        raise ImageError(path, "the image is uniform (every pixel has the same value): nothing to classify")
    warnings = _intrinsic(info, stats, sizes_known=bool(profile and profile.get("short_side")))
    if profile:
        warnings += _against_profile(info, stats, profile)
    return warnings


def _intrinsic(info: ImageInfo, stats: dict, sizes_known: bool) -> list[str]:
    out = []
    short, long_ = sorted((info.width, info.height))
    if not sizes_known and short < TINY_PX:  # with a profile, sizes are compared with the training images
        out.append(f"tiny image ({info.width}x{info.height} pixels): a radiograph is hundreds of pixels across")
    if not sizes_known and long_ / short > MAX_ASPECT:
        out.append(f"extreme aspect ratio ({info.width}x{info.height}, {long_ / short:.0f}:1): not a radiograph's shape")
    if stats["levels"] == 2:
        out.append("only two grey levels: a mask or a drawing, not a radiograph")
    elif stats["gray_std"] < MIN_STD:
        out.append(f"almost uniform image (contrast {stats['gray_std']:.1f} grey levels): little to classify")
    return out


def _depth(bits: int) -> str:
    """8 bits or fewer are used as they are; more go through the 8-bit rule, whatever the container."""
    return "8-bit" if bits <= 8 else "high bit depth (9 to 16 bits)"


def _tone(photometric: str) -> str:
    """gray for gray files and MONOCHROME1/2 DICOM (read so that bright is dense); colour for RGB(A)."""
    return "colour" if photometric in ("rgb", "rgba") else "gray"


def _against_profile(info: ImageInfo, stats: dict, profile: dict) -> list[str]:
    out = []
    n = profile.get("images", 0)
    modalities = profile.get("modalities") or {}
    if info.modality and modalities and info.modality not in modalities:
        out.append(f"modality {info.modality} never seen in training (trained on {', '.join(modalities)})")
    depths = {_depth(int(b)) for b in profile.get("bits") or {}}
    if depths and _depth(info.bits) not in depths:
        out.append(f"{info.bits}-bit image; the training images were all {' or '.join(sorted(depths))}")
    tones = {_tone(t) for t in profile.get("photometric") or {}}
    if tones and _tone(info.photometric) not in tones:
        out.append(f"{_tone(info.photometric)} image ({info.photometric}); the training images were all "
                   f"{' or '.join(sorted(tones))}")
    short_side = profile.get("short_side")
    if short_side and min(info.width, info.height) < 0.5 * short_side["min"]:
        out.append(f"image {info.width}x{info.height} is much smaller than every training image "
                   f"(shorter side at least {short_side['min']:g} pixels)")
    aspect = profile.get("aspect")
    ratio = max(info.width, info.height) / max(1, min(info.width, info.height))
    if aspect and not (aspect["min"] / 1.5 <= ratio <= aspect["max"] * 1.5):
        out.append(f"shape {info.width}x{info.height} ({ratio:.2f}:1) unlike the training images "
                   f"({aspect['min']:.2f}:1 to {aspect['max']:.2f}:1)")
    for key, words in STATS.items():
        s = (profile.get("stats") or {}).get(key)
        if not s:
            continue
        margin = max(0.25 * (s["p99"] - s["p01"]), MIN_MARGIN)
        if not s["p01"] - margin <= stats[key] <= s["p99"] + margin:
            out.append(f"{words} {stats[key]:.0f} is far from the training images' "
                       f"({s['p01']:.0f} to {s['p99']:.0f} for 98% of {n})")
    return out
