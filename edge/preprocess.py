"""The one deterministic preprocessing, shared by training and the edge.

    gray image -> to_uint8 -> GaussianBlur -> CLAHE -> resize -> scale/normalize -> (C, H, W) float32

For 8-bit gray input the result equals, bit for bit, the plain OpenCV sequence::

    b = cv2.GaussianBlur(img, (5, 5), 0)
    c = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(b)
    r = cv2.resize(c, (224, 224), interpolation=cv2.INTER_AREA)
    x = (r.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)

The 8-bit rule, for an image that is not uint8 (16-bit PNG/TIFF, DICOM), in order:

1. The file's own display range, when it has one (``display_range``: the DICOM
   window or VOI LUT, or the stored range of an 8-bit DICOM), is mapped
   linearly onto [0, 255]: the modality's choice of what is black and white wins.
2. Otherwise ``PreprocessConfig.high_bit_rule`` decides:

   - ``"percentile"`` (the default): the 0.5th and 99.5th
     percentiles of the pixel values map to 0 and 255, values outside clip.
     Outliers cannot wreck it: one dead or saturated detector pixel, or burned-in
     text at the maximum value, leaves the mapping of the anatomy unchanged (with
     min-max, one pixel at 65535 in a 12-bit image squeezes the anatomy into 16
     grey levels). The percentiles are exact ranks (``PERCENTILES``) of at most
     ``PERCENTILE_SAMPLES`` pixels taken on a regular grid, so the cost does not
     grow with the image. When the two percentiles are equal (more than 99% of
     the image one value), the image's own minimum and maximum are used instead.
   - ``"minmax"`` (older bundles, whose manifest says so): the
     image's own [min, max] map to [0, 255] with ``cv2.normalize(...,
     NORM_MINMAX, CV_8U)``; the display range is ignored.

   Values are rounded to nearest; a constant image becomes all zeros.

Both rules use the full range of a 12-bit image stored in 16 bits instead of
keeping its top 8 bits (which leaves it nearly black), independently of the
stored bit depth. Training and the edge run this same function with the
bundle's PreprocessConfig, so they always agree.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from medge.edge.config import check_ranges, check_types, from_dict
from medge.edge.errors import ImageError
from medge.edge.inputs.formats import DEFAULT_MAX_PIXELS
from medge.edge.inputs.image import load_image, to_gray

INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
HIGH_BIT_RULES = ("percentile", "minmax")
PERCENTILES = (0.5, 99.5)  # the "percentile" rule: these map to black and white
PERCENTILE_SAMPLES = 1 << 18  # at most this many pixels (a regular grid) decide the percentiles


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that decides what the model sees; saved with every checkpoint and bundle."""

    blur_ksize: int = 5  # Gaussian kernel side, odd; 1 disables the blur
    blur_sigma: float = 0.0  # 0: OpenCV derives sigma from the kernel size (1.1 for 5)
    clahe_clip_limit: float = 2.0  # CLAHE contrast limit
    clahe_tile_grid: int = 8  # CLAHE tiles per side (8 -> 8x8 tiles)
    size: int = 224  # output height and width in pixels
    interpolation: str = "area"  # resize method; "area" anti-aliases the large downscale of an X-ray
    mean: float = 0.5  # normalize: (x / 255 - mean) / std
    std: float = 0.5
    channels: int = 1  # 1, or 3 = the gray plane repeated (for 3-channel models)
    high_bit_rule: str = "percentile"  # how non-8-bit images become 8-bit (module docstring); old bundles: "minmax"

    def __post_init__(self):
        check_types(self)
        check_ranges("PreprocessConfig", [
            (self.blur_ksize >= 1 and self.blur_ksize % 2 == 1, f"blur_ksize must be odd and >= 1, got {self.blur_ksize}"),
            (self.blur_sigma >= 0, f"blur_sigma must be >= 0, got {self.blur_sigma}"),
            (self.clahe_clip_limit > 0, f"clahe_clip_limit must be > 0, got {self.clahe_clip_limit}"),
            (1 <= self.clahe_tile_grid <= 64, f"clahe_tile_grid must be in 1..64, got {self.clahe_tile_grid}"),
            (1 <= self.size <= 4096, f"size must be in 1..4096, got {self.size}"),
            (self.interpolation in INTERPOLATIONS,
             f"interpolation must be one of {list(INTERPOLATIONS)}, got {self.interpolation!r}"),
            (self.std > 0, f"std must be > 0, got {self.std}"),
            (self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}"),
            (self.high_bit_rule in HIGH_BIT_RULES,
             f"high_bit_rule must be one of {list(HIGH_BIT_RULES)}, got {self.high_bit_rule!r}"),
        ])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        """Build from a dict (e.g. a manifest); unknown keys and bad values raise ConfigError.

        A dict without ``high_bit_rule`` was written before the rule could be chosen: it gets "minmax", the
        only rule there was, so that an old bundle or checkpoint keeps preprocessing as it was trained.
        """
        if isinstance(d, dict) and "high_bit_rule" not in d:
            d = {**d, "high_bit_rule": "minmax"}
        return from_dict(cls, d)

    def fingerprint(self) -> str:
        """Short stable hash of the config (cache keys, manifests)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


_local = threading.local()


def _clahe(cfg: PreprocessConfig):
    # One CLAHE object per thread: a shared one gives silently wrong pixels under threads.
    cache = _local.__dict__.setdefault("clahe", {})
    key = (cfg.clahe_clip_limit, cfg.clahe_tile_grid)
    if key not in cache:
        cache[key] = cv2.createCLAHE(clipLimit=float(cfg.clahe_clip_limit), tileGridSize=(cfg.clahe_tile_grid,) * 2)
    return cache[key]


def to_uint8(gray: np.ndarray, cfg: PreprocessConfig = PreprocessConfig(),
             display_range: tuple[float, float] | None = None) -> np.ndarray:
    """Apply the 8-bit rule (module docstring) to a non-8-bit image; uint8 input is returned as is.

    Args:
        gray: 2-D uint8, uint16 or float32.
        cfg: its ``high_bit_rule`` decides images without a display range.
        display_range: (black, white) values defined by the file (``ImageInfo.display_range``).
    """
    if gray.dtype == np.uint8:
        return gray
    if cfg.high_bit_rule == "minmax":
        return cv2.normalize(gray, None, 0, 255, cv2.NORM_MINMAX, cv2.CV_8U)
    if cfg.high_bit_rule != "percentile":
        raise ValueError(f"unknown high_bit_rule {cfg.high_bit_rule!r}")  # unreachable: PreprocessConfig validates it
    lo, hi = display_range if display_range is not None else percentile_range(gray)
    if not hi > lo:
        return np.zeros(gray.shape, np.uint8)
    # (x - lo) * 255 / (hi - lo), clipped to 0..255 and rounded to nearest, with OpenCV's vectorised
    # saturating arithmetic: uint16 needs no float copy of the image (the subtraction saturates at 0).
    shifted = cv2.subtract(gray, float(lo))
    if gray.dtype != np.uint16:
        cv2.max(shifted, 0.0, dst=shifted)
    return cv2.convertScaleAbs(shifted, alpha=255.0 / (float(hi) - float(lo)))


def percentile_range(gray: np.ndarray) -> tuple[float, float]:
    """The values at ``PERCENTILES`` (exact ranks of a regular grid of at most ``PERCENTILE_SAMPLES`` pixels).

    Falls back to the minimum and maximum when the two percentiles are equal.
    """
    step = max(1, int(np.ceil(np.sqrt(gray.size / PERCENTILE_SAMPLES))))
    sample = np.ascontiguousarray(gray[::step, ::step]).ravel()
    n = sample.size
    ranks = [int(round(q / 100.0 * (n - 1))) for q in PERCENTILES]
    part = np.partition(sample, ranks)
    lo, hi = float(part[ranks[0]]), float(part[ranks[1]])
    if hi <= lo:
        lo, hi = float(gray.min()), float(gray.max())
    return lo, hi


def _uint8_stages(image: np.ndarray, cfg: PreprocessConfig, display_range=None) -> dict[str, np.ndarray]:
    gray = to_uint8(to_gray(image), cfg, display_range)
    k = cfg.blur_ksize
    blurred = cv2.GaussianBlur(gray, (k, k), cfg.blur_sigma) if k > 1 else gray
    clahe = _clahe(cfg).apply(blurred)
    resized = cv2.resize(clahe, (cfg.size, cfg.size), interpolation=INTERPOLATIONS[cfg.interpolation])
    return {"gray": gray, "blurred": blurred, "clahe": clahe, "resized": resized}


def preprocess_stages(image: np.ndarray, cfg: PreprocessConfig = PreprocessConfig(),
                      display_range: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Run the chain and keep every intermediate (for ``medge preview``, the input checks and debugging).

    Returns:
        dict with ``gray`` (uint8), ``blurred``, ``clahe``, ``resized`` (uint8) and
        ``tensor`` (float32, (C, H, W)).
    """
    stages = _uint8_stages(image, cfg, display_range)
    return {**stages, "tensor": normalize(stages["resized"], cfg)}


def preprocess_uint8(image: np.ndarray, cfg: PreprocessConfig = PreprocessConfig(),
                     display_range: tuple[float, float] | None = None) -> np.ndarray:
    """The deterministic part up to the resize: (size, size) uint8. Cacheable."""
    return _uint8_stages(image, cfg, display_range)["resized"]


def normalize(resized: np.ndarray, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """(H, W) uint8 -> (C, H, W) float32, ``(x / 255 - mean) / std`` in float32."""
    if resized.dtype != np.uint8 or resized.ndim != 2:
        raise ImageError(None, f"normalize expects a 2-D uint8 array, got {resized.dtype} {resized.shape}")
    x = (resized.astype(np.float32) / np.float32(255.0) - np.float32(cfg.mean)) / np.float32(cfg.std)
    return np.repeat(x[None], cfg.channels, axis=0) if cfg.channels > 1 else x[None]


def preprocess(image: np.ndarray, cfg: PreprocessConfig = PreprocessConfig(),
               display_range: tuple[float, float] | None = None) -> np.ndarray:
    """Preprocess one image exactly as in training.

    Args:
        image: 2-D gray (uint8, uint16 or float32), or BGR/BGRA as OpenCV decodes it.
        cfg: the preprocessing configuration stored with the model.
        display_range: the file's own (black, white) values, ``ImageInfo.display_range``
            from ``edge.inputs.image.load_image`` (a DICOM window); None for arrays and plain files.

    Returns:
        float32 array of shape (cfg.channels, cfg.size, cfg.size).
    """
    return normalize(preprocess_uint8(image, cfg, display_range), cfg)


def preprocess_file(path, cfg: PreprocessConfig = PreprocessConfig(), max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one file and preprocess it exactly as the edge does (its DICOM window included).

    Returns:
        float32 array of shape (cfg.channels, cfg.size, cfg.size).

    Raises:
        ImageError, MissingExtraError: as ``edge.inputs.image.load_image``.
    """
    image, info = load_image(path, max_pixels)
    return preprocess(image, cfg, info.display_range)


def preprocess_batch(images, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Preprocess a sequence of images into one (N, C, H, W) float32 blob."""
    tensors = [preprocess(im, cfg) for im in images]
    if not tensors:
        return np.zeros((0, cfg.channels, cfg.size, cfg.size), np.float32)
    return np.stack(tensors)
