"""Heatmaps: where the model looked, computed on the edge with numpy + OpenCV only.

Usage:
    from medge.edge.model import Model
    model = Model.load("bundles/xray")
    if model.explain_method:                       # "cam", "occlusion", or None for older bundles
        e = model.explain("chest.png")             # the predicted class; class_index=... for another
        cv2.imwrite("chest.heatmap.png", e.overlay())

There are no gradients on the edge, so the methods are those that need only forward passes.
Each is a small class over a shared base (as pytorch-grad-cam arranges its methods): the
subclass computes a raw map per image at its own resolution; the base turns it into the
heatmap the same way for every method: ReLU (only evidence *for* the class), bilinear resize
to the model's input size, then scaled to [0, 1] by its min and max (pytorch-grad-cam's
``scale_cam_image`` convention; a map with no positive evidence is all zeros).

- ``CamExplainer``: class activation map (Zhou et al. 2016, arXiv:1512.04150) for heads that
  are global average pooling + one linear layer. The bundle's ONNX model has a second output,
  the last convolutional feature map F (N, C, h, w), and the bundle stores the head's weight W
  (K, C) and bias b (K,). The map of class k is ``W[k] @ F`` at every position; its mean plus
  ``b[k]`` *is* the model's logit k, which is checked on every call, so a heatmap never comes
  from a head that is not the model's. Cost: the one forward pass plus a few milliseconds.
  For such heads it equals pytorch-grad-cam's GradCAM (whose channel weights are then W[k]
  divided by h*w, a factor the [0, 1] scaling removes).
- ``OcclusionExplainer``: occlusion sensitivity (Zeiler & Fergus 2014, arXiv:1311.2901) for
  heads where CAM is not exact (mobilenet_v3's linear-hardswish-linear). A square patch
  (filled with 0 in the normalized input, the mean gray) slides over the image; the drop of the
  class's logit when a patch is hidden is credited to the pixels it covered, averaged over the
  patches covering each pixel. Cost: one forward pass per patch position (e.g. 13 x 13 = 169 at
  224 px), batched through cv2.dnn.

Both work per output: a multi-label bundle's (``edge.findings``) class k is finding k, its CAM
uses the head's row k and its occlusion map the drop of logit k alone. That is the right score
for a finding: its calibrated probability sigmoid(z_k / T_k) is monotone in z_k and depends on
no other finding (a softmax would mix the others in), and the [0, 1] scaling removes the 1/T_k.
By default a multi-label heatmap explains the most probable finding (``Model.label_indices``);
``Model.predict(..., heatmaps=[names])`` gives one per finding named.
"""
from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from medge.edge.errors import BundleError, InferenceError, ModelIntegrityError, UsageError
from medge.edge.preprocess import PreprocessConfig
from medge.edge.runtime.bundle import sha256_bytes

METHODS = ("cam", "occlusion")
CAM_HEAD_FILE = "cam_head.npy"  # (K, C + 1) float32: the head's weight, then its bias as the last column
FEATURES_OUTPUT = "features"  # the second ONNX output of a CAM bundle
CAM_LOGIT_RTOL = 1e-3  # |mean of the raw map + bias - logit| allowed, relative to max(1, |logit|)

# run(blob, names) -> {name: array}: a chunked, guarded forward pass supplied by the caller
# (``Model`` gives each thread its own cv2.dnn.Net).
Runner = Callable[[np.ndarray, tuple[str, ...]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Explanation:
    """A heatmap of one input for one class, and what it was drawn over."""

    heatmap: np.ndarray  # float32 (H, W) in [0, 1], the model's input size; high = evidence for the class
    class_index: int  # the class explained (index into the model's classes)
    method: str  # "cam" or "occlusion"
    logits: np.ndarray  # float32 (K,): the model's logits for this input
    image: np.ndarray  # uint8 (H, W): the preprocessed image the model saw (its first channel)

    def overlay(self, image: np.ndarray | None = None, alpha: float = 0.4,
                colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
        """The heatmap in an OpenCV colour map, alpha-blended over an image.

        Args:
            image: uint8 gray (H, W) or BGR (H, W, 3) image, any size (the heatmap is
                resized to it); default: the preprocessed image the model saw.
            alpha: weight of the heatmap colours (0 = image only, 1 = heatmap only).
            colormap: a ``cv2.COLORMAP_*`` (default JET: blue = none, red = most).

        Returns:
            uint8 BGR (H, W, 3).

        Raises:
            UsageError: an image that is not uint8 gray or BGR, or alpha outside [0, 1].
        """
        base = self.image if image is None else image
        if not isinstance(base, np.ndarray) or base.dtype != np.uint8 or not (
                base.ndim == 2 or (base.ndim == 3 and base.shape[2] == 3)) or min(base.shape[:2]) < 1:
            raise UsageError(f"overlay needs a uint8 gray (H, W) or BGR (H, W, 3) image, got "
                             f"{getattr(base, 'dtype', type(base).__name__)} {getattr(base, 'shape', '')}")
        if not 0.0 <= alpha <= 1.0:
            raise UsageError(f"overlay alpha must be in [0, 1], got {alpha}")
        bgr = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR) if base.ndim == 2 else base
        h, w = bgr.shape[:2]
        heat = self.heatmap if (h, w) == self.heatmap.shape else cv2.resize(self.heatmap, (w, h), interpolation=cv2.INTER_LINEAR)
        colours = cv2.applyColorMap(np.round(np.clip(heat, 0, 1) * 255).astype(np.uint8), colormap)
        return cv2.addWeighted(colours, float(alpha), bgr, 1.0 - float(alpha), 0.0)


def scale_map(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """ReLU, bilinear resize to ``size`` (H, W), then min-max to [0, 1]; all zeros when nothing is positive."""
    pos = np.maximum(np.asarray(raw, np.float32), 0)
    h, w = size
    if pos.shape != (h, w):
        pos = cv2.resize(pos, (w, h), interpolation=cv2.INTER_LINEAR)
    pos = pos - pos.min()
    top = float(pos.max())
    return (pos / top if top > 0 else np.zeros_like(pos)).astype(np.float32)


def display_image(tensor: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The uint8 image behind a normalized (C, H, W) model input (its first channel), exactly."""
    return np.clip(np.round((tensor[0].astype(np.float64) * cfg.std + cfg.mean) * 255), 0, 255).astype(np.uint8)


def resolve_classes(logits: np.ndarray, class_indices) -> list[int]:
    """The class to explain per image: as given, or the predicted one; UsageError when out of range."""
    if class_indices is None:
        return [int(np.argmax(z)) for z in logits]
    if callable(class_indices):  # the caller's rule for the predicted class (a bundle's threshold: edge.decision)
        return [int(k) for k in class_indices(logits)]
    k = logits.shape[1]
    for c in class_indices:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < k:
            raise UsageError(f"class_index must be an integer in 0..{k - 1} (the model has {k} classes), got {c!r}")
    return [int(c) for c in class_indices]


class Explainer:
    """Shared base: logits and raw maps from the subclass, heatmaps and Explanations here."""

    method = ""

    def raw_maps(self, run: Runner, blob: np.ndarray, class_indices) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
        """Logits (N, K), the class explained per image (``resolve_classes``) and its raw map (any resolution)."""
        raise NotImplementedError

    def explain(self, run: Runner, blob: np.ndarray, class_indices=None,
                cfg: PreprocessConfig = PreprocessConfig()) -> tuple[np.ndarray, list[Explanation]]:
        """Explain a preprocessed (N, C, H, W) float32 blob.

        Args:
            run: the chunked forward pass (``Runner``).
            blob: the model's input, as ``edge.preprocess`` makes it.
            class_indices: the class to explain per image; None = each image's argmax; or a function of the
                logits giving the class per image (a bundle's operating point: ``Model.label_indices``).
            cfg: the bundle's PreprocessConfig (its normalization gives back the image the model saw).

        Returns:
            (logits (N, K), one Explanation per image).

        Raises:
            UsageError: class indices of the wrong number or out of range.
            InferenceError: a bad blob or output (``edge.runtime``), or a CAM head that does not match the model.
        """
        if class_indices is not None and not callable(class_indices) and len(class_indices) != len(blob):
            raise UsageError(f"{len(class_indices)} class indices for {len(blob)} images")
        logits, ks, raws = self.raw_maps(run, blob, class_indices)
        size = tuple(blob.shape[2:])
        return logits, [Explanation(scale_map(raw, size), k, self.method, logits[i].copy(), display_image(blob[i], cfg))
                        for i, (k, raw) in enumerate(zip(ks, raws, strict=True))]

    def class_maps(self, run: Runner, blob: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, list[list]]:
        """Logits (N, K) and the raw maps of every class in ``classes`` (checked by ``resolve_classes``) for each
        image ([image][class])."""
        raise NotImplementedError

    def explain_classes(self, run: Runner, blob: np.ndarray, classes: tuple[int, ...],
                        cfg: PreprocessConfig = PreprocessConfig()) -> tuple[np.ndarray, list[list[Explanation]]]:
        """One Explanation per class of ``classes`` for each image of a blob, from the forward passes one class
        needs (a multi-label bundle's heatmap per finding: CAM maps from one pass, occlusion drops of every class
        from the same occluded copies); each map equals ``explain`` with that class.

        Returns:
            (logits (N, K), per image its Explanations in the order of ``classes``).

        Raises:
            UsageError: a class out of range. InferenceError: as ``explain``.
        """
        logits, maps = self.class_maps(run, blob, classes)
        size = tuple(blob.shape[2:])
        return logits, [[Explanation(scale_map(raw, size), k, self.method, logits[i].copy(), display_image(blob[i], cfg))
                         for k, raw in zip(classes, maps[i], strict=True)] for i in range(len(blob))]


class CamExplainer(Explainer):
    """Class activation map from the feature-map output and the stored linear head."""

    method = "cam"

    def __init__(self, head: np.ndarray, output: str = FEATURES_OUTPUT, logits_output: str = "logits",
                 logit_rtol: float = CAM_LOGIT_RTOL):
        self.weight = np.ascontiguousarray(head[:, :-1], np.float32)  # (K, C)
        self.bias = np.asarray(head[:, -1], np.float64)  # (K,)
        self.output, self.logits_output = output, logits_output
        self.logit_rtol = logit_rtol  # looser for a fast variant: its last layer is quantized, the head is not

    def with_tolerance(self, logit_rtol: float) -> CamExplainer:
        """The same head, checked against the logits at ``logit_rtol``."""
        other = copy.copy(self)
        other.logit_rtol = logit_rtol
        return other

    def cams(self, features: np.ndarray, class_indices) -> np.ndarray:
        """Raw maps (N, h, w): ``W[k] @ F`` at every position, without the bias."""
        n, c, h, w = features.shape
        if c != self.weight.shape[1]:
            raise InferenceError(f"feature map has {c} channels, the CAM head expects {self.weight.shape[1]}")
        flat = features.reshape(n, c, h * w)
        return np.stack([(self.weight[k] @ flat[i]).reshape(h, w) for i, k in enumerate(class_indices)])

    def check_logits(self, features: np.ndarray, logits: np.ndarray) -> None:
        """Every class's map averages to its logit (minus bias), or the head is not the model's."""
        pooled = features.reshape(*features.shape[:2], -1).astype(np.float64).mean(axis=2)  # (N, C)
        implied = pooled @ self.weight.T.astype(np.float64) + self.bias
        worst = np.abs(implied - logits) / np.maximum(1.0, np.abs(logits))
        if not float(worst.max(initial=0.0)) <= self.logit_rtol:
            raise InferenceError(f"the bundle's CAM head does not reproduce the model's logits (relative difference "
                                 f"{float(worst.max()):.3g} > {self.logit_rtol:g}): refusing to draw a heatmap that is "
                                 "not the model's; re-export the bundle")

    def _forward(self, run, blob) -> tuple[np.ndarray, np.ndarray]:
        """Logits and feature maps of one pass, the head checked against them."""
        outs = run(blob, (self.logits_output, self.output))
        logits, features = outs[self.logits_output], outs[self.output]
        if features.ndim != 4:
            raise InferenceError(f"feature-map output {self.output!r} has shape {features.shape}, expected (N, C, h, w)")
        self.check_logits(features, logits)
        return logits, features

    def raw_maps(self, run, blob, class_indices):
        logits, features = self._forward(run, blob)
        ks = resolve_classes(logits, class_indices)
        return logits, ks, list(self.cams(features, ks))

    def class_maps(self, run, blob, classes):
        logits, features = self._forward(run, blob)
        per_class = [self.cams(features, [k] * len(blob)) for k in resolve_classes(logits[:1], list(classes))]
        return logits, [[m[i] for m in per_class] for i in range(len(blob))]


@dataclass(frozen=True)
class OcclusionGrid:
    """Where the occluding patch goes: top-left corners covering every pixel of a size x size input."""

    size: int
    patch: int
    stride: int

    @property
    def starts(self) -> list[int]:
        last = max(0, self.size - self.patch)
        s = list(range(0, last + 1, self.stride))
        return s if s[-1] == last else [*s, last]  # the last patch touches the far edge

    @property
    def positions(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.starts for x in self.starts]


def default_occlusion(size: int) -> dict:
    """Patch of about 1/7 of the side (32 px at 224, like a CAM cell), half-overlapping: 13 x 13 positions at 224."""
    patch = max(1, round(size / 7))
    return {"patch": patch, "stride": max(1, patch // 2), "baseline": 0.0}


class OcclusionExplainer(Explainer):
    """Occlusion sensitivity: the logit drop when a patch is hidden, spread over the pixels it hid."""

    method = "occlusion"

    def __init__(self, size: int, patch: int, stride: int, baseline: float = 0.0, batch_size: int = 16,
                 logits_output: str = "logits"):
        if not (1 <= patch <= size and 1 <= stride <= patch and math.isfinite(baseline) and batch_size >= 1):
            raise BundleError(f"bad occlusion settings: patch {patch}, stride {stride}, baseline {baseline} "
                              f"for input size {size}")
        self.grid = OcclusionGrid(size, patch, stride)
        self.baseline, self.batch_size, self.logits_output = float(baseline), int(batch_size), logits_output

    @property
    def passes_per_image(self) -> int:
        return len(self.grid.positions) + 1

    def raw_maps(self, run, blob, class_indices):
        logits = run(blob, (self.logits_output,))[self.logits_output]
        ks = resolve_classes(logits, class_indices)
        return logits, ks, [self._one(run, x, z, [k])[0] for x, z, k in zip(blob, logits, ks, strict=True)]

    def class_maps(self, run, blob, classes):
        logits = run(blob, (self.logits_output,))[self.logits_output]
        ks = resolve_classes(logits[:1], list(classes))
        return logits, [list(self._one(run, x, z, ks)) for x, z in zip(blob, logits, strict=True)]

    def _one(self, run: Runner, x: np.ndarray, logits: np.ndarray, ks: list[int]) -> np.ndarray:
        """Maps (len(ks), H, W) of one image: each class's logit drop, from the same occluded copies."""
        p, positions = self.grid.patch, self.grid.positions
        scores = np.asarray(logits, np.float64)[ks]
        total = np.zeros((len(ks), *x.shape[1:]), np.float64)
        count = np.zeros(x.shape[1:], np.float64)
        for i in range(0, len(positions), self.batch_size):  # bounded memory: batch_size occluded copies at a time
            chunk = positions[i : i + self.batch_size]
            batch = np.repeat(x[None], len(chunk), axis=0)
            for j, (y0, x0) in enumerate(chunk):
                batch[j, :, y0 : y0 + p, x0 : x0 + p] = self.baseline
            drops = scores - run(batch, (self.logits_output,))[self.logits_output][:, ks].astype(np.float64)
            for (y0, x0), d in zip(chunk, drops, strict=True):
                total[:, y0 : y0 + p, x0 : x0 + p] += d[:, None, None]
                count[y0 : y0 + p, x0 : x0 + p] += 1
        return (total / np.maximum(count, 1)).astype(np.float32)


def load_explainer(manifest: dict, bundle_dir: str | Path, batch_size: int = 16) -> Explainer | None:
    """The explainer a bundle's manifest declares (``manifest["explain"]``); None for bundles without one.

    A CAM bundle's head file is read and its SHA-256 checked against the manifest.

    Raises:
        BundleError: an unknown method, a missing or malformed head file or settings.
        ModelIntegrityError: the head file's SHA-256 differs from the manifest's.
    """
    section = manifest.get("explain")
    if section is None:
        return None
    method = section.get("method") if isinstance(section, dict) else None
    if method not in METHODS:
        raise BundleError(f"{bundle_dir}: unknown heatmap method {method!r} in the manifest; this medge knows {list(METHODS)}")
    size = int(manifest["model"]["input_shape"][-1])
    if method == "occlusion":
        try:
            return OcclusionExplainer(size, int(section["patch"]), int(section["stride"]), float(section["baseline"]),
                                      batch_size)
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{bundle_dir}: bad occlusion section in the manifest: {e}") from None
    path = Path(bundle_dir) / CAM_HEAD_FILE  # never a name from the manifest
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"{path}: CAM head missing or unreadable ({e.strerror or e}): an incomplete bundle copy") from None
    if sha256_bytes(data) != section.get("head_sha256"):
        raise ModelIntegrityError(f"{path}: SHA-256 does not match the manifest's: the CAM head was modified or only "
                                  "partly copied; refusing to use it")
    head = _read_npy(data, path)
    k = len(manifest["classes"])
    channels = section.get("feature_shape", [None])[0]
    if head.ndim != 2 or head.shape[0] != k or head.dtype != np.float32 or (channels and head.shape[1] != channels + 1):
        raise BundleError(f"{path}: CAM head has shape {head.shape} ({head.dtype}), expected ({k}, {channels} + 1) float32")
    return CamExplainer(head, section.get("output_name", FEATURES_OUTPUT))


def _read_npy(data: bytes, path: Path) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BundleError(f"{path}: not a readable .npy array: {e}") from None


def save_head(weight: np.ndarray, bias: np.ndarray) -> bytes:
    """The CAM head file's bytes: (K, C + 1) float32, weight then bias (``CAM_HEAD_FILE``)."""
    buf = io.BytesIO()
    np.save(buf, np.concatenate([weight, bias[:, None]], axis=1).astype(np.float32), allow_pickle=False)
    return buf.getvalue()
