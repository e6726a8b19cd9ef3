"""The one deterministic preprocessing, shared by training and the edge.

    gray image -> to_uint8 -> GaussianBlur -> CLAHE -> resize -> scale/normalize -> (C, H, W) float32

For 8-bit gray input the result equals, bit for bit, the plain OpenCV sequence::

    b = cv2.GaussianBlur(img, (5, 5), 0)
    c = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(b)
    r = cv2.resize(c, (224, 224), interpolation=cv2.INTER_AREA)
    x = (r.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)

The 16-bit rule (``high_bit_rule="minmax"``): an image that is not uint8 (16-bit
PNG/TIFF, DICOM after rescale and windowing) is mapped linearly from its own
[min, max] to [0, 255] with ``cv2.normalize(..., NORM_MINMAX, CV_8U)`` (rounded to
nearest); a constant image becomes all zeros. This uses the full range of a
12-bit image stored in 16 bits instead of keeping its top 8 bits (which leaves
it nearly black), and is independent of the stored bit depth. A single
saturated pixel (burned-in text) compresses the range; CLAHE then restores
local contrast.
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
from medge.edge.image import to_gray

INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
HIGH_BIT_RULES = ("minmax",)


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
    high_bit_rule: str = "minmax"  # how non-8-bit images become 8-bit (module docstring)

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
        """Build from a dict (e.g. a manifest); unknown keys and bad values raise ConfigError."""
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


def to_uint8(gray: np.ndarray, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Apply ``cfg.high_bit_rule`` (module docstring) to a non-8-bit image; uint8 input is returned as is."""
    if gray.dtype == np.uint8:
        return gray
    if cfg.high_bit_rule == "minmax":
        return cv2.normalize(gray, None, 0, 255, cv2.NORM_MINMAX, cv2.CV_8U)
    raise ValueError(f"unknown high_bit_rule {cfg.high_bit_rule!r}")  # unreachable: PreprocessConfig validates it


def _uint8_stages(image: np.ndarray, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    gray = to_uint8(to_gray(image), cfg)
    k = cfg.blur_ksize
    blurred = cv2.GaussianBlur(gray, (k, k), cfg.blur_sigma) if k > 1 else gray
    clahe = _clahe(cfg).apply(blurred)
    resized = cv2.resize(clahe, (cfg.size, cfg.size), interpolation=INTERPOLATIONS[cfg.interpolation])
    return {"gray": gray, "blurred": blurred, "clahe": clahe, "resized": resized}


def preprocess_stages(image: np.ndarray, cfg: PreprocessConfig = PreprocessConfig()) -> dict[str, np.ndarray]:
    """Run the chain and keep every intermediate (for ``medge preview`` and debugging).

    Returns:
        dict with ``gray`` (uint8), ``blurred``, ``clahe``, ``resized`` (uint8) and
        ``tensor`` (float32, (C, H, W)).
    """
    stages = _uint8_stages(image, cfg)
    return {**stages, "tensor": normalize(stages["resized"], cfg)}


def preprocess_uint8(image: np.ndarray, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """The deterministic part up to the resize: (size, size) uint8. Cacheable."""
    return _uint8_stages(image, cfg)["resized"]


def normalize(resized: np.ndarray, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """(H, W) uint8 -> (C, H, W) float32, ``(x / 255 - mean) / std`` in float32."""
    if resized.dtype != np.uint8 or resized.ndim != 2:
        raise ImageError(None, f"normalize expects a 2-D uint8 array, got {resized.dtype} {resized.shape}")
    x = (resized.astype(np.float32) / np.float32(255.0) - np.float32(cfg.mean)) / np.float32(cfg.std)
    return np.repeat(x[None], cfg.channels, axis=0) if cfg.channels > 1 else x[None]


def preprocess(image: np.ndarray, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Preprocess one image exactly as in training.

    Args:
        image: 2-D gray (uint8, uint16 or float32), or BGR/BGRA as OpenCV decodes it.
        cfg: the preprocessing configuration stored with the model.

    Returns:
        float32 array of shape (cfg.channels, cfg.size, cfg.size).
    """
    return normalize(preprocess_uint8(image, cfg), cfg)


def preprocess_batch(images, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Preprocess a sequence of images into one (N, C, H, W) float32 blob."""
    tensors = [preprocess(im, cfg) for im in images]
    if not tensors:
        return np.zeros((0, cfg.channels, cfg.size, cfg.size), np.float32)
    return np.stack(tensors)
