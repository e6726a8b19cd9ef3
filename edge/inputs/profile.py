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
  - the model itself: trained on a data set ``medge synth`` made (the profile's
    ``synthetic``, from the data set's marker file, never guessed from pixels):
    every record says ``SYNTHETIC_WARNING``, whatever the input;
  - a DICOM modality never seen: not among the training modalities (or those
    declared at export), or any modality when training had no DICOM at all;
  - a bit depth never seen, by what the preprocessing does with it: 8 bits or
    fewer are used as they are, 9 to 16 go through the 8-bit rule (a window or
    the percentile stretch), which does not depend on the exact depth (a 12-bit
    DICOM and a 16-bit PNG of 12-bit values look alike after it);
  - a photometric interpretation never seen: gray (gray files, MONOCHROME2),
    inverted gray (MONOCHROME1: stored dark-is-dense, inverted on reading, a step
    training never took unless it had such files) or colour;
  - a size outside [min / ``SIZE_FACTOR``, max x ``SIZE_FACTOR``] of the training
    images' sides (shorter side below half the smallest, longer side above twice
    the largest): the blur (5 pixels by default) acts on the full-size image and the resize
    then averages (side / model input)^2 pixels into one, so beyond one octave
    the input's sharpness and noise differ from anything training showed; and a
    shape outside [min / ``ASPECT_FACTOR``, max x ``ASPECT_FACTOR``] of the
    training aspect ratios (the resize to a square stretches it);
  - brightness or contrast, before and after CLAHE, far outside the training
    range: outside [p1 - m, p99 + m] of the training values, where the margin m
    is a quarter of the p1..p99 spread, at least ``MIN_MARGIN`` grey levels.

A bundle whose profile lacks a field (exported before it was recorded) gets no
warning of that kind; ``profile_notes`` says so once per run.

The same ``image_stats`` runs in training (``medge.train.data``) and at the
edge, on the same preprocessing stages.
"""
from __future__ import annotations

import cv2
import numpy as np

from medge.edge.errors import ImageError
from medge.edge.inputs.formats import ImageInfo

PROFILE_VERSION = 2  # 2: "synthetic"
TINY_PX = 128  # shorter side below this: warned (a radiograph is hundreds of pixels across), without a profile
MAX_ASPECT = 4.0  # longer / shorter side above this: warned
MIN_STD = 2.0  # grey levels: below this standard deviation (8-bit image) an image is near-constant
MIN_MARGIN = 10.0  # grey levels: the least margin around the training range of a statistic
SIZE_FACTOR = 2.0  # sides: shorter below the smallest training one / 2, or longer above the largest x 2: warned
ASPECT_FACTOR = 1.5  # aspect ratio below the smallest training one / 1.5 or above the largest x 1.5: warned
SYNTHETIC_WARNING = "trained on synthetic images: not for real patients"
MODEL_WARNINGS = (SYNTHETIC_WARNING,)  # about the model, the same on every record; the others are about the input
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


def build_profile(items: list[tuple[dict, dict]], synthetic: bool | None = None) -> dict | None:
    """What a training set looks like, from (``ImageInfo.to_dict()``, ``image_stats``) of each image.

    Args:
        items: one (info, stats) per training image.
        synthetic: whether the data set was made by ``medge synth`` (its marker file); None: not known, not recorded.

    Returns:
        the ``data_profile`` saved in checkpoints and bundle manifests (JSON-ready),
        or None for no images.
    """
    if not items:
        return None
    infos = [i for i, _ in items]
    short = [min(i["width"], i["height"]) for i in infos]
    aspect = [max(i["width"], i["height"]) / max(1, min(i["width"], i["height"])) for i in infos]
    profile = {
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
    if synthetic is not None:
        profile["synthetic"] = bool(synthetic)
    return profile


def check_input(info: ImageInfo, stats: dict, profile: dict | None = None, path=None) -> list[str]:
    """Warnings for one input (module docstring); raises ImageError for what must not be labelled.

    Args:
        info: what the file is (``edge.inputs.image.load_image``).
        stats: ``image_stats`` of its preprocessing stages.
        profile: the bundle's ``data_profile``; None checks the intrinsic rules only.
        path: named in the error.

    Returns:
        list of warnings, in words; empty when nothing is odd. A model trained on synthetic images puts
        ``SYNTHETIC_WARNING`` first, on every input.
    """
    trained_modalities = set((profile or {}).get("modalities") or {})
    if info.modality in NON_IMAGE_MODALITIES and info.modality not in trained_modalities:
        raise ImageError(path, f"this DICOM is {NON_IMAGE_MODALITIES[info.modality]} (modality {info.modality}), "
                               "not an image of a patient: nothing to classify")
    if stats["levels"] <= 1:
        raise ImageError(path, "the image is uniform (every pixel has the same value): nothing to classify")
    warnings = [SYNTHETIC_WARNING] if profile and profile.get("synthetic") is True else []
    warnings += _intrinsic(info, stats, sizes_known=bool(profile and profile.get("short_side")))
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


def input_warnings(warnings: list[str]) -> list[str]:
    """The warnings about the input itself: ``warnings`` without ``MODEL_WARNINGS``, which every record of a bundle
    carries alike (``medge monitor`` counts the inputs that had any)."""
    return [w for w in warnings if w not in MODEL_WARNINGS]


def profile_notes(profile: dict | None) -> list[str]:
    """What a bundle's profile cannot check, to be said once per run (not on every record)."""
    if not profile:
        return ["the bundle has no data profile (exported from a checkpoint without one): inputs are checked for "
                "intrinsic problems only (tiny, uniform, ...), and no record can say whether the training images "
                "were synthetic"]
    if "synthetic" not in profile:
        return ["the bundle's data profile does not say whether the training images were synthetic (exported by an "
                "older medge): no record can say so"]
    return []


def _depth(bits: int) -> str:
    """8 bits or fewer are used as they are; more go through the 8-bit rule, whatever the container."""
    return "8-bit" if bits <= 8 else "high bit depth (9 to 16 bits)"


def _tone(photometric: str) -> str:
    """gray for gray files and MONOCHROME2; inverted gray for MONOCHROME1 (inverted on reading, so that bright is
    dense); colour for RGB(A)."""
    if photometric in ("rgb", "rgba"):
        return "colour"
    return "inverted gray" if photometric == "MONOCHROME1" else "gray"


def _against_profile(info: ImageInfo, stats: dict, profile: dict) -> list[str]:
    return _kind_warnings(info, profile) + _size_warnings(info, profile) + _stat_warnings(stats, profile)


def _modality_warnings(info: ImageInfo, profile: dict) -> list[str]:
    """A DICOM modality not among the training (or declared) ones; any, when training had formats but no DICOM."""
    modalities = profile.get("modalities") or {}
    if not info.modality:
        return []
    if modalities:
        return [] if info.modality in modalities else [
            f"modality {info.modality} never seen in training (trained on {', '.join(modalities)})"]
    formats = profile.get("formats") or {}
    if formats and "dicom" not in formats:
        return [f"modality {info.modality} never seen in training (no DICOM among the training images)"]
    return []


def _kind_warnings(info: ImageInfo, profile: dict) -> list[str]:
    out = _modality_warnings(info, profile)
    depths = {_depth(int(b)) for b in profile.get("bits") or {}}
    if depths and _depth(info.bits) not in depths:
        out.append(f"{info.bits}-bit image; the training images were all {' or '.join(sorted(depths))}")
    tones = {_tone(t) for t in profile.get("photometric") or {}}
    if tones and _tone(info.photometric) not in tones:
        out.append(f"{_tone(info.photometric)} image ({info.photometric}); the training images were all "
                   f"{' or '.join(sorted(tones))}")
    return out


def _size_warnings(info: ImageInfo, profile: dict) -> list[str]:
    out = []
    size = f"{info.width}x{info.height}"
    short_side = profile.get("short_side")
    if short_side and min(info.width, info.height) < short_side["min"] / SIZE_FACTOR:
        out.append(f"image {size} is much smaller than every training image "
                   f"(shorter side at least {short_side['min']:g} pixels)")
    # the longest side of any training image: the larger of the largest width and the largest height
    longest = max((profile.get(k) or {}).get("max", 0) for k in ("width", "height"))
    if longest and max(info.width, info.height) > SIZE_FACTOR * longest:
        out.append(f"image {size} is much larger than every training image (longer side at most {longest:g} pixels)")
    aspect = profile.get("aspect")
    ratio = max(info.width, info.height) / max(1, min(info.width, info.height))
    if aspect and not (aspect["min"] / ASPECT_FACTOR <= ratio <= aspect["max"] * ASPECT_FACTOR):
        out.append(f"shape {size} ({ratio:.2f}:1) unlike the training images "
                   f"({aspect['min']:.2f}:1 to {aspect['max']:.2f}:1)")
    return out


def _stat_warnings(stats: dict, profile: dict) -> list[str]:
    out = []
    n = profile.get("images", 0)
    for key, words in STATS.items():
        s = (profile.get("stats") or {}).get(key)
        if not s:
            continue
        margin = max(0.25 * (s["p99"] - s["p01"]), MIN_MARGIN)
        if not s["p01"] - margin <= stats[key] <= s["p99"] + margin:
            out.append(f"{words} {stats[key]:.0f} is far from the training images' "
                       f"({s['p01']:.0f} to {s['p99']:.0f} for 98% of {n})")
    return out
