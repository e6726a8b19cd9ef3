"""The model bundle: a folder with ``model.onnx`` and its manifest ``model.json`` (and, for
heatmaps by CAM, the head's weights in ``cam_head.npy``, hashed in the manifest: ``edge.explain``).

The edge cannot read ONNX metadata without the onnx package, so everything it
needs is in the manifest: format version, classes, PreprocessConfig, input
name/shape, opset, the SHA-256 of model.onnx, the versions used to build it,
training metrics, the export's parity report and a golden self-test (inputs
regenerated from a seed, expected outputs stored).

Bundles are written atomically (``medge.edge.outputs.atomic_dir``): built in a
hidden sibling folder, then renamed into place, so a failed or interrupted export
never leaves a half-written bundle where a good one was.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from medge.edge.errors import BundleError, InferenceError
from medge.edge.outputs import atomic_dir
from medge.edge.preprocess import PreprocessConfig, preprocess

FORMAT = "medge-bundle"
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "model.json"
LOGITS_OUTPUT = "logits"  # the name every medge bundle gives its class scores
REQUIRED = ("format", "format_version", "classes", "preprocess", "model", "golden")
REQUIRED_MODEL = ("file", "sha256", "input_name", "input_shape", "opset")


def wanted_outputs(names, outputs: tuple[str, ...], engine: str) -> list[str]:
    """The outputs a ``forward(names)`` of the cv2.dnn kind asks an engine from outside OpenCV for: ``names`` None,
    the class scores (the output named ``logits``, or the only one: never "the first one"); a str, that one; a
    list, those.

    Raises:
        InferenceError: no output holds the logits, or a name the model lacks.
    """
    if names is None:
        if LOGITS_OUTPUT in outputs:
            return [LOGITS_OUTPUT]
        if len(outputs) == 1:
            return list(outputs)
        raise InferenceError(f"the model has outputs {list(outputs)} and none named {LOGITS_OUTPUT!r}: "
                             "which one holds the class scores is unknown")
    wanted = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in outputs]
    if unknown:
        raise InferenceError(f"{engine} forward of outputs {wanted} failed: the model has no output "
                             f"{unknown[0]!r} (it has {list(outputs)})")
    return wanted


class ForeignNet:
    """The part of ``cv2.dnn.Net`` that ``edge.runtime`` calls, for the nets of engines from outside OpenCV
    (``OrtNet``, ``OvNet``): they set ``_outputs`` (the graph's output names) and ``_engine``, and implement
    ``forward`` with ``self.wanted(names)``."""

    _outputs: tuple[str, ...] = ()
    _engine = "engine"
    _blob: np.ndarray | None = None

    def empty(self) -> bool:
        return False

    def getUnconnectedOutLayersNames(self) -> tuple[str, ...]:
        return self._outputs

    def setInput(self, blob: np.ndarray) -> None:
        self._blob = blob

    def wanted(self, names) -> list[str]:
        """``wanted_outputs`` of this net, after checking that an input was set."""
        if self._blob is None:
            raise InferenceError(f"{self._engine} forward without an input")
        return wanted_outputs(names, self._outputs, self._engine)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(bundle_dir: str | os.PathLike) -> dict:
    """Read and validate ``model.json``.

    Raises:
        BundleError: no such folder, no manifest, invalid JSON, another format,
            an unknown format version, or missing keys.
    """
    d = Path(bundle_dir)
    if d.is_file():
        raise BundleError(f"{d}: is a file: give the bundle folder that holds it ({MODEL_FILE} + {MANIFEST_FILE})")
    if not d.is_dir():
        raise BundleError(f"{d}: bundle folder not found")
    path = d / MANIFEST_FILE
    if not path.is_file():
        inside = sorted(str(m.parent) for m in d.glob(f"*/{MANIFEST_FILE}"))  # a run folder holds its bundle/
        hint = f"; the bundle inside it: {', '.join(inside)}" if inside else ""
        raise BundleError(f"{d}: no {MANIFEST_FILE} manifest: not a medge bundle, or an incomplete copy{hint}")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: manifest is not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{path}: not a medge bundle manifest (format {m.get('format') if isinstance(m, dict) else None!r})")
    if m.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {m.get('format_version')!r} is not supported "
                          f"(this medge reads version {FORMAT_VERSION}); upgrade medge or re-export")
    missing = [k for k in REQUIRED if k not in m] + [f"model.{k}" for k in REQUIRED_MODEL if k not in m.get("model", {})]
    if missing:
        raise BundleError(f"{path}: manifest lacks {missing}")
    try:
        PreprocessConfig.from_dict(m["preprocess"])
    except Exception as e:
        raise BundleError(f"{path}: bad preprocess section: {e}") from None
    return m


def golden_inputs(seed: int, count: int, cfg: PreprocessConfig) -> np.ndarray:
    """Deterministic self-test inputs, regenerated identically on any machine.

    Smooth 256x256 uint8 images from numpy's legacy RandomState (its stream is
    frozen by NumPy's compatibility policy) go through the full edge
    preprocessing, so the self-test also checks this box's OpenCV preprocessing.

    Returns:
        (count, C, size, size) float32.
    """
    rng = np.random.RandomState(seed)
    images = []
    for _ in range(count):
        coarse = rng.randint(0, 256, size=(12, 12)).astype(np.uint8)
        images.append(cv2.resize(coarse, (256, 256), interpolation=cv2.INTER_LINEAR))
    return np.stack([preprocess(im, cfg) for im in images])


def write_bundle(bundle_dir: str | os.PathLike, onnx_bytes: bytes, manifest: dict, overwrite: bool = False,
                 extra_files: dict[str, bytes] | None = None) -> Path:
    """Write model.onnx, model.json and ``extra_files`` (name -> bytes, e.g. a CAM head) atomically into ``bundle_dir``.

    The manifest's ``model.sha256`` and ``model.size_bytes`` are filled in here from
    the bytes written; the manifest's sections that name an extra file carry its hash.
    An existing bundle is replaced only with ``overwrite``; any other existing folder is never touched.
    """
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if name in (MODEL_FILE, MANIFEST_FILE) or Path(name).name != name or name.startswith("."):
            raise BundleError(f"bad extra bundle file name {name!r}")
    target = Path(bundle_dir)
    if target.exists():
        if not overwrite:
            raise BundleError(f"{target}: exists already (use --overwrite to replace the bundle in it)")
        if not (target / MANIFEST_FILE).is_file():
            raise BundleError(f"{target}: exists and is not a medge bundle; refusing to replace it")
    manifest = {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION}
    manifest["model"] = {**manifest["model"], "file": MODEL_FILE, "sha256": sha256_bytes(onnx_bytes),
                         "size_bytes": len(onnx_bytes)}
    check_writable_parent(target)
    with atomic_dir(target, replace=overwrite) as tmp:
        (tmp / MODEL_FILE).write_bytes(onnx_bytes)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)
    return target


def check_writable_parent(target: str | os.PathLike) -> Path:
    """Create the parent folder of ``target`` if needed and prove it is writable."""
    parent = Path(target).absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise BundleError(f"{target}: cannot write into {parent}: {e.strerror or e}") from None
    return parent
