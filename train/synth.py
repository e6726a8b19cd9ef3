"""Synthetic chest-X-ray-like data: a learnable two-class ImageFolder, or a multi-label indexed set, made offline.

Usage: medge synth data/xray --n 400 --seed 0 [--overwrite]
       medge synth data/findings --findings 5 --n 600      (multi-label, NIH-format index)

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

With ``--findings K`` (1 to 8) the set is multi-label, as NIH ChestX-ray14 is:
``OUT/images/PPPPPPPP_FFF.png`` (patient, follow-up) and an NIH-format index
``OUT/Data_Entry.csv`` with NIH's columns exactly (``Finding Labels`` as
``A|B`` or ``No Finding``, ``Patient ID``, ``View Position``, ...); read it with
``read_index(OUT/Data_Entry.csv, OUT/images, fmt="nih")``. The findings are the
first K of ``FINDINGS``, each a visually distinct pattern in its own place (a
large disc upper left, three small dots lower right, an oblique band, a filled
base with a level, a patchy haze, a wide heart shadow, a ring at the apex, a
grid texture). Each patient has 2 to 4 images that share the patient's anatomy
(body, lungs, ribs, texture: only pose, exposure, view and noise vary) and
mostly the same findings (a patient "has" a finding, and then 85 % of the
patient's images show it, against 3 % otherwise): the patient-level effect that
makes a split by image leak. Findings 0 and 1 (Mass and Nodule) come together
more often than by chance. Image (patient p, follow-up f) depends only on
(seed, p, f). There is no split column: ``medge train`` splits by patient.
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


def _anatomy(rng: np.random.Generator, s: int):
    """A chest without lesions (float32) and its frame: (image, (xx, yy, cx, cy, lungs)) in units of the side."""
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
    return img, (xx, yy, cx, cy, lungs)


def make_image(index: int, disease: bool, cfg: SynthConfig = SynthConfig()) -> np.ndarray:
    """One synthetic radiograph as float32 in [0, 1]; depends only on (cfg.seed, index, disease)."""
    return make_case(index, disease, cfg)[0]


def make_case(index: int, disease: bool, cfg: SynthConfig = SynthConfig()) -> tuple[np.ndarray, list[Lesion]]:
    """One synthetic radiograph (float32 in [0, 1]) and the lesions drawn in it (none when not ``disease``)."""
    rng = np.random.default_rng([cfg.seed, index])
    s = cfg.size
    img, (xx, yy, cx, cy, _) = _anatomy(rng, s)
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


# ---- multi-label: several findings per image, several images per patient, an NIH-format index ----

FINDINGS = ("Mass", "Nodule", "Atelectasis", "Effusion", "Infiltration", "Cardiomegaly", "Pneumothorax", "Fibrosis")
INDEX_FILE = "Data_Entry.csv"  # in OUT: the NIH-format index of a multi-label set (read it with fmt="nih")
IMAGES_DIR = "images"  # in OUT: the images of a multi-label set, named as NIH names them
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")  # NIH's header, as NIH writes it


@dataclass(frozen=True)
class FindingsConfig:
    n: int = 600  # images in all (whole patients; the last patient may have fewer images)
    findings: int = 5  # 1 to len(FINDINGS): the first ``findings`` of FINDINGS
    size: int = 256
    bits: str = "8"  # "8", "16" (12-bit values) or "mix" (by follow-up number)
    lesion_contrast: float = 0.2  # peak brightness of a finding's pattern, in units of the image's range
    prevalence: float = 0.25  # about the share of images that show each finding
    images_per_patient: tuple[int, int] = (2, 4)  # fewest and most
    seed: int = 0


@dataclass(frozen=True)
class Patient:
    """One synthetic patient: id, images, sex, age and the findings the patient has (its images mostly show them)."""

    id: int
    images: int
    sex: str
    age: int
    has: tuple[bool, ...]


SHOWN_IF_HAS, SHOWN_IF_NOT = 0.85, 0.03  # P(an image shows a finding) when its patient has it, and when not


def make_patient(pid: int, cfg: FindingsConfig) -> Patient:
    """The patient ``pid`` (from 1): depends only on (cfg.seed, pid). Finding 1 comes with finding 0 more often."""
    rng = np.random.default_rng([cfg.seed, 7, pid])
    lo, hi = cfg.images_per_patient
    q = min(0.95, max(0.0, (cfg.prevalence - SHOWN_IF_NOT) / (SHOWN_IF_HAS - SHOWN_IF_NOT)))
    has = rng.random(cfg.findings) < q
    if cfg.findings > 1 and has[0]:
        has[1] = rng.random() < 0.7  # the correlated pair
    return Patient(pid, int(rng.integers(lo, hi + 1)), "MF"[int(rng.integers(2))], int(rng.integers(20, 80)),
                   tuple(bool(h) for h in has))


def make_findings_case(patient: Patient, follow_up: int, cfg: FindingsConfig
                       ) -> tuple[np.ndarray, tuple[bool, ...], list[Lesion], str]:
    """Image ``follow_up`` of ``patient``: (float32 image in [0, 1], findings shown, lesions drawn, view).

    The patient's anatomy (body, lungs, ribs, texture) is the same in all of the patient's images (the
    patient-level effect a split by image leaks); pose, exposure, view and noise vary per image.
    Depends only on (cfg.seed, patient.id, follow_up)."""
    rng, shown = _shown(patient, follow_up, cfg)
    s = cfg.size
    img, frame = _anatomy(np.random.default_rng([cfg.seed, 9, patient.id]), s)
    lesions = []
    for k in np.flatnonzero(shown):
        pattern, lesion = _finding_pattern(int(k), rng, frame, s)
        pattern *= cfg.lesion_contrast * rng.uniform(0.8, 1.2)
        img = img + pattern - pattern.mean()  # the finding, not the mean brightness, tells it
        lesions.append(lesion)
    dx, dy = rng.uniform(-0.03, 0.03, 2) * s  # pose
    img = cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (s, s), borderMode=cv2.BORDER_REFLECT)
    lesions = [Lesion(les.x + dx, les.y + dy, les.radius) for les in lesions]
    gain, offset = rng.uniform(0.85, 1.05), rng.uniform(-0.05, 0.05)  # exposure
    img = gain * img + offset + 0.01 * rng.standard_normal(img.shape).astype(np.float32)
    view = "PA" if rng.random() < 0.6 else "AP"
    return np.clip(img, 0, 1).astype(np.float32), shown, lesions, view


def _shown(patient: Patient, follow_up: int, cfg: FindingsConfig) -> tuple[np.random.Generator, tuple[bool, ...]]:
    """(the image's random generator, the findings it shows): the generator's first draws decide the findings."""
    rng = np.random.default_rng([cfg.seed, 8, patient.id, follow_up])
    return rng, tuple(bool(rng.random() < (SHOWN_IF_HAS if h else SHOWN_IF_NOT)) for h in patient.has)


def findings_shown(patient: Patient, follow_up: int, cfg: FindingsConfig) -> tuple[bool, ...]:
    """The findings image ``follow_up`` of ``patient`` shows (as ``make_findings_case`` draws them), without drawing."""
    return _shown(patient, follow_up, cfg)[1]


def _finding_pattern(k: int, rng: np.random.Generator, frame, s: int) -> tuple[np.ndarray, Lesion]:
    """Finding k's pattern (peak about 1) and where it is: each finding its own shape, size, place and texture."""
    xx, yy, cx, cy, lungs = frame
    jx, jy = rng.uniform(-0.03, 0.03, 2)
    if k == 0:  # Mass: one large soft disc, upper left lung
        x, y, r = cx - 0.19 + jx, cy - 0.12 + jy, 0.07
        p = 1 / (1 + np.exp(np.clip((np.hypot(xx - x, yy - y) - r) / (0.15 * r), -50, 50)))
    elif k == 1:  # Nodule: three small bright dots, lower right lung
        x, y, r = cx + 0.19 + jx, cy + 0.12 + jy, 0.06
        p = 1.3 * sum(np.exp(-((xx - x - ox) ** 2 + (yy - y - oy) ** 2) / (2 * 0.022 ** 2))
                for ox, oy in ((-0.04, 0.0), (0.03, -0.035), (0.02, 0.04)))
    elif k == 2:  # Atelectasis: an oblique band, lower left lung
        x, y, r = cx - 0.18 + jx, cy + 0.15 + jy, 0.08
        p = 1.2 * np.exp(-(((yy - y) - 0.5 * (xx - x)) / 0.025) ** 2) * (np.abs(xx - x) < r)
    elif k == 3:  # Effusion: the right lung base filled up to a level
        x, y, r = cx + 0.19 + jx, cy + 0.1 + jy, 0.1
        p = 1.5 * lungs * (xx > cx) / (1 + np.exp(np.clip(-(yy - y) / 0.01, -50, 50)))
    elif k == 4:  # Infiltration: a patchy haze over the right upper lung
        x, y, r = cx + 0.18 + jx, cy - 0.1 + jy, 0.1
        p = 1.4 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * r ** 2)) * (0.6 + 0.4 * np.clip(_texture(rng, s, s / 30), -1, 1))
    elif k == 5:  # Cardiomegaly: a wide heart shadow, centre left
        x, y, r = cx - 0.08 + jx, cy + 0.1 + jy, 0.14
        p = 1.5 * np.exp(-(((xx - x) / r) ** 2 + ((yy - y) / (0.7 * r)) ** 2) ** 2)
    elif k == 6:  # Pneumothorax: a bright ring, left apex
        x, y, r = cx - 0.17 + jx, cy - 0.22 + jy, 0.05
        p = np.exp(-((np.hypot(xx - x, yy - y) - r) / 0.015) ** 2)
    else:  # Fibrosis: a fine grid texture, right mid lung
        x, y, r = cx + 0.2 + jx, cy + jy, 0.08
        grid = (np.cos(2 * np.pi * xx / 0.08) * np.cos(2 * np.pi * yy / 0.08)) ** 2  # in units of the side
        p = 1.5 * grid * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * r ** 2))
    return p.astype(np.float32), Lesion(float(x * s), float(y * s), float(r * s))


def plan_patients(cfg: FindingsConfig) -> list[Patient]:
    """The patients of a set: ids from 1 until ``cfg.n`` images (the last patient cut to fit)."""
    patients, total = [], 0
    while total < cfg.n:
        p = make_patient(len(patients) + 1, cfg)
        p = Patient(p.id, min(p.images, cfg.n - total), p.sex, p.age, p.has)
        patients.append(p)
        total += p.images
    return patients


def generate_findings(out: str | Path, cfg: FindingsConfig = FindingsConfig(), overwrite: bool = False) -> dict:
    """Write a multi-label set: ``OUT/images/*.png``, the NIH-format index ``OUT/Data_Entry.csv``, the lesion index
    and ``synth.json``; returns the counts (images, patients, positives per finding). Atomic, as ``generate``."""
    out = Path(out)
    lo, hi = cfg.images_per_patient
    if not 1 <= cfg.findings <= len(FINDINGS) or cfg.n < 2 or cfg.size < 32 or cfg.bits not in ("8", "16", "mix") \
            or not 1 <= lo <= hi or not 0 < cfg.prevalence < 1:
        raise UsageError(f"synth: need 1 <= findings <= {len(FINDINGS)}, n >= 2, size >= 32, bits in 8/16/mix, "
                         f"1 <= fewest <= most images per patient, prevalence in (0, 1); got {cfg}")
    check_target(out, overwrite)
    with atomic_dir(out, replace=True) as tmp:
        counts = _write_findings(tmp, cfg)
    return counts


def _write_findings(out: Path, cfg: FindingsConfig) -> dict:
    names = FINDINGS[: cfg.findings]
    rows, drawn = [NIH_HEADER], []
    positives = dict.fromkeys(names, 0)
    patients = plan_patients(cfg)
    for patient in patients:
        for j in range(patient.images):
            img, shown, lesions, view = make_findings_case(patient, j, cfg)
            name = f"{patient.id:08d}_{j:03d}.png"
            bits = {"8": 8, "16": 16}.get(cfg.bits, 16 if j % 2 == 0 else 8)
            write_image(out / IMAGES_DIR / name, _quantize(img, bits))
            labels = "|".join(n for n, on in zip(names, shown, strict=True) if on) or "No Finding"
            rows.append(f"{name},{labels},{j},{patient.id},{patient.age + j},{patient.sex},{view},"
                        f"{cfg.size},{cfg.size},0.143,0.143")
            drawn.append(DrawnImage(labels, (cfg.size, cfg.size), tuple(lesions)).to_record(f"{IMAGES_DIR}/{name}"))
            for n, on in zip(names, shown, strict=True):
                positives[n] += int(on)
    counts = {"images": len(rows) - 1, "patients": len(patients), "findings": list(names), "positives": positives}
    atomic_write_text(out / INDEX_FILE, "\n".join(rows) + "\n")
    atomic_write_text(out / LESION_INDEX, "".join(json.dumps(r) + "\n" for r in drawn))
    atomic_write_text(out / MARKER, json.dumps({"config": asdict(cfg), "index": INDEX_FILE, "format": "nih",
                                                "counts": counts}, indent=2) + "\n")
    return counts


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("synth", help="write a synthetic chest-X-ray-like two-class data set",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SynthConfig()
    p.add_argument("out", help="output folder: new or empty (parent folders are created)")
    p.add_argument("--overwrite", action="store_true", help="replace a data set synth wrote there before")
    p.add_argument("--findings", type=int, default=0, metavar="K",
                   help=f"write a multi-label set of K findings (1 to {len(FINDINGS)}) with patients and an NIH-format "
                        f"index, {INDEX_FILE} (default: a two-class ImageFolder)")
    p.add_argument("--n", type=int, default=None, help=f"number of images, half per class (default: {d.n}; "
                   f"{FindingsConfig().n} with --findings)")
    p.add_argument("--size", type=int, default=d.size, help="image side in pixels (default: %(default)s)")
    p.add_argument("--bits", choices=["8", "16", "mix"], default=d.bits, help="bit depth of the PNGs (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of each class for val (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="share of each class for test (default: %(default)s)")
    p.add_argument("--lesion-contrast", type=float, default=None,
                   help=f"blob brightness; lower is harder (default: {d.lesion_contrast}; "
                        f"{FindingsConfig().lesion_contrast} with --findings)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    return p


def run(args: argparse.Namespace) -> int:
    if args.findings:
        return run_findings(args)
    contrast = SynthConfig().lesion_contrast if args.lesion_contrast is None else args.lesion_contrast
    cfg = SynthConfig(n=SynthConfig().n if args.n is None else args.n, size=args.size, bits=args.bits,
                      val_fraction=args.val_fraction, test_fraction=args.test_fraction, lesion_contrast=contrast,
                      seed=args.seed)
    counts = generate(args.out, cfg, args.overwrite)
    for split, per in sorted(counts.items()):
        print(f"{split}: " + ", ".join(f"{k} {v}" for k, v in sorted(per.items())))
    wrote(args.out, f"{sum(sum(p.values()) for p in counts.values())} images")
    return 0


def run_findings(args: argparse.Namespace) -> int:
    """``medge synth --findings K``: the multi-label set (the split options do not apply: train splits by patient)."""
    d = FindingsConfig()
    n = d.n if args.n is None else args.n
    contrast = d.lesion_contrast if args.lesion_contrast is None else args.lesion_contrast
    cfg = FindingsConfig(n=n, findings=args.findings, size=args.size, bits=args.bits, lesion_contrast=contrast,
                         seed=args.seed)
    counts = generate_findings(args.out, cfg, args.overwrite)
    print(f"{counts['images']} images of {counts['patients']} patients; positives: "
          + ", ".join(f"{k} {v}" for k, v in counts["positives"].items()))
    wrote(Path(args.out) / INDEX_FILE, f"the index (NIH format) of {counts['images']} images under "
          f"{Path(args.out) / IMAGES_DIR}")
    return 0
