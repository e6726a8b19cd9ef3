"""Synthetic chest-X-ray-like data: a learnable two-class ImageFolder, made offline.

Usage: medge synth data/xray --n 400 --seed 0 [--overwrite]

Each image is a chest-like radiograph: a bright body with two darker lung
fields, a spine, curved ribs and low-frequency texture, under a random pose,
exposure and contrast. The ``disease`` class adds one to three faint,
lesion-like blobs inside the lungs. The blobs' average brightness is taken back
out of the whole image, so the classes cannot be told apart by mean brightness.

Written as ``OUT/{train,val,test}/{normal,disease}/NNNNN.png``, 8-bit, 16-bit
(12-bit values in 16-bit PNGs, like a detector's output) or both mixed; the class
folders hold images only. ``OUT/lesions.jsonl`` records, one line per image keyed
by its path relative to OUT, where its lesions were drawn (centre and radius in
pixels of the image), the ground truth of the heatmap benchmark
(``medge.benchmarks.pointing_game``; read it with ``read_lesion_index``), and
``OUT/synth.json`` the config and counts. synth.json is also the set's marker:
``medge train`` records in its data profile that the images were synthetic
(``is_synthetic``), and every record of a bundle exported from it says so. (A file beside each image would be a
non-image in a class folder, which ``medge validate`` reports as a problem and
``medge predict`` as skipped.)
Deterministic: image i depends only on (seed, i). numpy + OpenCV only.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from medge.edge.errors import UsageError
from medge.edge.inputs.image import write_image
from medge.edge.outputs import atomic_dir, atomic_write_text, check_output_dir, wrote

CLASSES = ("disease", "normal")  # sorted, as ImageFolder orders them
LESION_INDEX = "lesions.jsonl"  # in OUT, beside the split folders: what was drawn in each image
MARKER = "synth.json"  # in OUT: the config and counts; its presence marks the data set as synthetic
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SynthConfig:
    n: int = 400  # images in all, half of each class
    size: int = 256  # side of each image in pixels
    bits: str = "8"  # "8", "16" (12-bit values) or "mix" (alternating)
    val_fraction: float = 0.2
    test_fraction: float = 0.1
    lesion_contrast: float = 0.15  # peak blob brightness, in units of the image's range
    seed: int = 0


def _texture(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    noise = rng.standard_normal((size, size)).astype(np.float32)
    k = int(scale * 6) | 1  # +-3 sigma, so the texture has no box edges
    t = cv2.GaussianBlur(noise, (k, k), scale)
    return t / (t.std() + 1e-6)


@dataclass(frozen=True)
class Lesion:
    """A drawn lesion, in pixels of the image: the disc's centre (x right, y down) and radius."""

    x: float
    y: float
    radius: float


def make_image(index: int, disease: bool, cfg: SynthConfig = SynthConfig()) -> np.ndarray:
    """One synthetic radiograph as float32 in [0, 1]; depends only on (cfg.seed, index, disease)."""
    return make_case(index, disease, cfg)[0]


def make_case(index: int, disease: bool, cfg: SynthConfig = SynthConfig()) -> tuple[np.ndarray, list[Lesion]]:
    """One synthetic radiograph (float32 in [0, 1]) and the lesions drawn in it (none when not ``disease``)."""
    rng = np.random.default_rng([cfg.seed, index])
    s = cfg.size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.52 + rng.uniform(-0.05, 0.05)
    img = 0.55 + 0.1 * _texture(rng, s, s / 10)  # soft tissue
    body = np.exp(-(((xx - cx) / 0.48) ** 4 + ((yy - cy) / 0.6) ** 4))
    img *= 0.6 + 0.4 * body
    lungs = np.zeros_like(img)
    for side in (-1, 1):
        lx, ly = cx + side * rng.uniform(0.17, 0.21), cy + rng.uniform(-0.04, 0.0)
        rx, ry = rng.uniform(0.12, 0.15), rng.uniform(0.27, 0.32)
        lungs = np.maximum(lungs, np.exp(-(((xx - lx) / rx) ** 2 + ((yy - ly) / ry) ** 2) ** 2))
    img -= 0.35 * lungs
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (yy * rng.uniform(9, 12) + 3 * (xx - cx) ** 2 + rng.uniform(0, 1)))
    img += 0.07 * ribs * lungs
    img += 0.25 * np.exp(-(((xx - cx) / 0.035) ** 2)) * body  # spine
    img += 0.04 * _texture(rng, s, s / 40) * lungs  # lung markings
    lesions = []
    if disease:
        blobs = np.zeros_like(img)
        for _ in range(rng.integers(1, 4)):
            side = rng.choice([-1, 1])
            bx = cx + side * rng.uniform(0.12, 0.26)
            by = cy + rng.uniform(-0.2, 0.2)
            r = rng.uniform(0.03, 0.06)
            d = np.sqrt((xx - bx) ** 2 + (yy - by) ** 2)
            with np.errstate(over="ignore"):  # far from the disc exp() overflows to inf: the term is 0, as it should be
                blobs += 1 / (1 + np.exp((d - r) / (0.15 * r)))  # a nodule: a disc with a soft edge
            lesions.append(Lesion(float(bx * s), float(by * s), float(r * s)))  # pixel (i, j) sits at (j / s, i / s)
        blobs *= cfg.lesion_contrast * rng.uniform(0.8, 1.2)
        img += blobs - blobs.mean()  # keep the mean brightness of the class unchanged
    gain, offset = rng.uniform(0.7, 1.1), rng.uniform(-0.1, 0.1)  # exposure
    img = gain * img + offset + 0.01 * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(img, 0, 1), lesions


@dataclass(frozen=True)
class DrawnImage:
    """What synth drew in one image: its class, its size (width, height) in pixels and its lesions (none if normal)."""

    label: str
    size: tuple[int, int]
    lesions: tuple[Lesion, ...]

    def to_record(self, key: str) -> dict:
        """One line of the lesion index."""
        return {"path": key, "label": self.label, "size": list(self.size), "lesions": [asdict(les) for les in self.lesions]}


def index_key(data: str | Path, image_path: str | Path) -> str:
    """The lesion index's key of an image: its path relative to the data set's folder, with ``/`` separators."""
    return Path(os.path.relpath(image_path, data)).as_posix()


def read_lesion_index(data: str | Path) -> dict[str, DrawnImage]:
    """The lesion index of a synth data set: {path relative to ``data`` (``index_key``): what was drawn there}.

    Raises:
        UsageError: ``data`` holds no ``lesions.jsonl`` (not a synth data set, or one of medge 0.4.0 or before), or a line
            of it is not a record of an image.
    """
    path = Path(data) / LESION_INDEX
    if not path.is_file():
        raise UsageError(f"{data}: no {LESION_INDEX}: not a data set of medge synth (medge 0.4.0 and "
                         f"before wrote a .json beside each image instead: make the set again)")
    index = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            r = json.loads(line)
            drawn = DrawnImage(r["label"], (int(r["size"][0]), int(r["size"][1])),
                               tuple(Lesion(**d) for d in r["lesions"]))
            index[r["path"]] = drawn
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise UsageError(f"{path}, line {n}: not a record of a synthetic image ({e!r})") from None
    return index


def is_synthetic(data: str | Path) -> bool:
    """Whether ``data`` is a data set synth wrote (its ``synth.json``), or one of its split folders (``OUT/train``
    given as a ROOT/<class>/* folder). Decided by the marker file only, never from the pixels."""
    data = Path(data)
    return (data / MARKER).is_file() or (data.name in SPLITS and (data.parent / MARKER).is_file())


def _quantize(img: np.ndarray, bits: int) -> np.ndarray:
    top = 4095 if bits == 16 else 255  # 16-bit files hold 12-bit values, as detectors write them
    return np.round(img * top).astype(np.uint16 if bits == 16 else np.uint8)


def write_dicom(path, pixels, photometric="MONOCHROME2", slope=None, intercept=None, window=None, transfer=None,
                frames=None, bits: int = 12, frame: bytes | None = None) -> str:
    """Write a DX DICOM file of ``bits`` stored bits (needs pydicom). ``frame``: an already compressed
    frame of ``transfer`` to store as is; without it, a ``transfer`` other than Explicit VR Little
    Endian writes a placeholder compressed stream (to test decoders that are not installed)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    transfer = transfer or ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    allocated = 8 if bits <= 8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, bits, bits - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if frames:
        ds.NumberOfFrames = frames
    if frame is None and transfer == ExplicitVRLittleEndian:
        ds.PixelData = pixels.astype(np.uint8 if allocated == 8 else np.uint16).tobytes()
    else:  # a placeholder is not decodable without a JPEG 2000 plugin
        ds.PixelData = encapsulate([frame if frame is not None else b"\xff\x4f\xff\x51" + bytes(100)])
        ds["PixelData"].VR = "OB"
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def check_target(out: Path, overwrite: bool = False) -> None:
    """Before any work: ``out`` must be new or empty, or (with ``overwrite``) a data set synth wrote."""
    check_output_dir(out, "data set")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out}: exists and is not empty (use --overwrite to replace a synthetic data set)")
        if not (out / MARKER).is_file():
            raise UsageError(f"{out}: exists and holds no synth.json: not a synthetic data set; refusing to replace it")


def generate(out: str | Path, cfg: SynthConfig = SynthConfig(), overwrite: bool = False) -> dict:
    """Write the data set, ``lesions.jsonl`` (what was drawn in each image) and ``synth.json`` (config and counts);
    returns the counts.

    The set is written into a hidden sibling folder and renamed into place when
    complete, so an interrupted run leaves nothing half-written. ``out`` must be
    new or empty; with ``overwrite`` a data set written by synth is replaced.
    """
    out = Path(out)
    if cfg.n < 2 or cfg.size < 32 or cfg.bits not in ("8", "16", "mix"):
        raise UsageError(f"synth: need n >= 2, size >= 32 and bits in 8/16/mix, got {cfg}")
    if not 0 <= cfg.val_fraction + cfg.test_fraction < 1:
        raise UsageError("synth: val_fraction + test_fraction must be in [0, 1)")
    check_target(out, overwrite)
    with atomic_dir(out, replace=True) as tmp:  # replacing only what check_target allowed
        counts = _write(tmp, cfg)
    return counts


def _write(out: Path, cfg: SynthConfig) -> dict:
    counts: dict[str, dict[str, int]] = {}
    drawn: list[dict] = []  # one record per image, for the lesion index
    per_class = cfg.n // 2
    n_val, n_test = round(per_class * cfg.val_fraction), round(per_class * cfg.test_fraction)
    for label in CLASSES:
        for j in range(per_class):
            split = "val" if j < n_val else "test" if j < n_val + n_test else "train"
            index = 2 * j + (label == "disease")
            # "mix": half of each class in each bit depth. (Alternating by index made every disease image
            # 8-bit and every normal one 16-bit: a model learnt the bit depth, not the lesions.)
            bits = {"8": 8, "16": 16}.get(cfg.bits, 16 if j % 2 == 0 else 8)
            img, lesions = make_case(index, label == "disease", cfg)
            key = f"{split}/{label}/{index:05d}.png"
            write_image(out / key, _quantize(img, bits))
            drawn.append(DrawnImage(label, (cfg.size, cfg.size), tuple(lesions)).to_record(key))
            counts.setdefault(split, {}).setdefault(label, 0)
            counts[split][label] += 1
    drawn.sort(key=lambda r: r["path"])  # the order a folder scan finds them in
    atomic_write_text(out / LESION_INDEX, "".join(json.dumps(r) + "\n" for r in drawn))
    atomic_write_text(out / MARKER, json.dumps({"config": asdict(cfg), "counts": counts}, indent=2) + "\n")
    return counts


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("synth", help="write a synthetic chest-X-ray-like two-class data set",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SynthConfig()
    p.add_argument("out", help="output folder: new or empty (parent folders are created)")
    p.add_argument("--overwrite", action="store_true", help="replace a data set synth wrote there before")
    p.add_argument("--n", type=int, default=d.n, help="number of images, half per class (default: %(default)s)")
    p.add_argument("--size", type=int, default=d.size, help="image side in pixels (default: %(default)s)")
    p.add_argument("--bits", choices=["8", "16", "mix"], default=d.bits, help="bit depth of the PNGs (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of each class for val (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="share of each class for test (default: %(default)s)")
    p.add_argument("--lesion-contrast", type=float, default=d.lesion_contrast,
                   help="blob brightness; lower is harder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    return p


def run(args: argparse.Namespace) -> int:
    cfg = SynthConfig(n=args.n, size=args.size, bits=args.bits, val_fraction=args.val_fraction,
                      test_fraction=args.test_fraction, lesion_contrast=args.lesion_contrast, seed=args.seed)
    counts = generate(args.out, cfg, args.overwrite)
    for split, per in sorted(counts.items()):
        print(f"{split}: " + ", ".join(f"{k} {v}" for k, v in sorted(per.items())))
    wrote(args.out, f"{sum(sum(p.values()) for p in counts.values())} images")
    return 0
