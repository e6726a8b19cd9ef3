"""Image-folder and indexed data sets, preprocessed once with ``edge`` and cached on disk.

Layouts:
  ROOT/train/<class>/*, ROOT/val/<class>/* (ROOT/test/<class>/* optional), or
  ROOT/<class>/*, split into train and val by a seeded, stratified ratio;
  a label index (``edge.inputs.index``: NIH, CheXpert or generic CSV), split by
  patient (``train.splits``) with one target per finding per image
  (``discover_index``).

Splits never put a patient in two splits where patients are known: an index's
patient column (or CheXpert's path), else the PatientID of DICOM files (read
from the header), in an index or in class folders. Class folders of files without a PatientID
(PNG, JPEG) are split by image exactly as before.

Images are found as ``medge predict`` finds them, by suffix or content
(``edge.inputs.classify_file``: a DICOM named ``IM000001`` is an image).

The deterministic preprocessing (``edge.preprocess``) runs once per file; its
(size, size) uint8 result is cached as ``.npy`` under a key made of the file's
absolute path, size, mtime and the PreprocessConfig fingerprint, so epoch 2
onwards (and later runs) never redo CLAHE. Beside it a ``.json`` keeps what the
file is and the statistics of its preprocessing (``edge.inputs.profile.image_stats``),
from which ``data_profile`` tells what training saw (and, from the data set's
marker file, whether ``medge synth`` made it); the bundle carries that
profile so that the edge can flag inputs unlike it. Normalisation is applied by
``edge.normalize`` for evaluation, so evaluation tensors are exactly what the
edge computes.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medge.edge.errors import DataError, MedgeError
from medge.edge.inputs.formats import SNIFF_BYTES, sniff_format
from medge.edge.inputs.image import load_image
from medge.edge.inputs.index import LabelIndex, dicom_patient
from medge.edge.inputs.profile import build_profile, image_stats
from medge.edge.inputs.scanning import classify_file
from medge.edge.preprocess import PreprocessConfig, normalize, preprocess_stages
from medge.train.splits import fractions_of, split_by_patient
from medge.train.synth import is_synthetic


@dataclass
class Split:
    """One split: file paths with their labels, and what could not be read.

    A label is a class index (single-label), or a tuple of one float per finding (multi-label: 1.0, 0.0, nan =
    masked). ``patients`` holds each image's patient id where the data says (None for an image without one),
    and is empty where the data knows no patients."""

    paths: list[str]
    labels: list
    cache_files: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    profiles: list[tuple[dict, dict]] = field(default_factory=list)  # (ImageInfo.to_dict(), image_stats) per file
    patients: list = field(default_factory=list)
    findings: tuple[str, ...] = ()  # the names of a multi-label split's targets

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def multilabel(self) -> bool:
        """Whether the labels are per-finding tuples (decided by the labels; an empty split by ``findings``)."""
        return isinstance(self.labels[0], tuple) if self.labels else bool(self.findings)


def _list_class_folder(folder: Path, classes: list[str] | None, split: str
                       ) -> tuple[list[str], dict[str, list[str]], list[tuple[str, str]]]:
    """(classes, the input files of each class, (path, reason) of every other file in the class folders): a file
    that is not an image is left out of training and said so, never dropped silently."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
    extra = sorted(set(found) - set(classes))
    if extra:
        raise DataError(f"{folder}: class folder(s) {extra} are not in the training classes {classes}")
    files, left_out = {}, []
    for c in classes:
        d = folder / c
        files[c] = []
        for path in sorted(str(p) for p in d.rglob("*") if p.is_file()) if d.is_dir() else []:
            kind, reason = classify_file(path)
            if kind == "input":
                files[c].append(path)
            else:
                left_out.append((path, f"{path}: {reason}"))
        if not files[c]:
            raise DataError(f"{folder}: class '{c}' has no images in the {split} split ({d})")
    return classes, files, left_out


def discover(root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], dict[str, Split]]:
    """Find classes and splits under ``root``.

    Returns:
        (class names sorted, {"train": Split, "val": Split[, "test": Split]}).

    Raises:
        DataError: missing folder, no class folders, a class without images.
    """
    root = Path(root)
    if root.is_file():
        raise DataError(f"{root}: is a file: give the data folder (ROOT/train/<class>/* or ROOT/<class>/*)")
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    splits: dict[str, Split] = {}
    if (root / "train").is_dir():
        classes, files, left_out = _list_class_folder(root / "train", None, "train")
        if len(classes) < 2:
            raise DataError(f"{root / 'train'}: need at least 2 class folders, found {classes}")
        per_split, not_inputs = {"train": files}, {"train": left_out}
        for name in ("val", "test"):
            if (root / name).is_dir():
                _, per_split[name], not_inputs[name] = _list_class_folder(root / name, classes, name)
        patients = _dicom_patients([p for by_class in per_split.values() for ps in by_class.values() for p in ps])
        if "val" not in per_split:
            per_split["train"], per_split["val"] = _split_files(files, val_fraction, seed, patients)
    else:
        classes, files, left_out = _list_class_folder(root, None, "whole")
        if len(classes) < 2:
            raise DataError(f"{root}: need at least 2 class folders (or train/ and val/), found {classes}")
        patients = _dicom_patients([p for ps in files.values() for p in ps])
        per_split = dict(zip(("train", "val"), _split_files(files, val_fraction, seed, patients), strict=True))
        not_inputs = {"train": left_out}  # one folder for both splits: its other files are reported once
    for name, by_class in per_split.items():
        items = [(p, classes.index(c)) for c in classes for p in by_class[c]]
        splits[name] = Split([p for p, _ in items], [y for _, y in items], failures=list(not_inputs.get(name, [])))
    _add_dicom_patients(splits, patients)
    return classes, splits


def _add_dicom_patients(splits: dict[str, Split], patients: dict[str, str] | None) -> None:
    """Each image's DICOM PatientID, where the files have one (the run records patients per split); a patient found
    in two splits of folders the user made is said on stderr (the split drawn here never does that)."""
    if patients is None:
        return
    seen: dict[str, str] = {}
    for name, split in splits.items():
        split.patients = [patients.get(p) for p in split.paths]
        for patient in filter(None, split.patients):
            if seen.setdefault(patient, name) != name:
                print(f"warning: patient {patient} has images in the {seen[patient]} and the {name} split: the "
                      f"{name} figures may be inflated by that patient's other images", file=sys.stderr)
                seen[patient] = name  # said once per pair of splits


def discover_index(index: LabelIndex, val_fraction: float = 0.2, test_fraction: float = 0.1, seed: int = 0
                   ) -> tuple[list[str], dict[str, Split]]:
    """Split a label index by patient (``train.splits.split_by_patient``), keeping its own split column where it
    has one (those images keep their split; the rest of their patient follows them; the others are assigned).

    Returns:
        (findings, {"train": Split, "val": Split[, "test": Split]}): multi-label Splits (one tuple of floats per
        image, nan = masked) with their patients. The index's missing files are the train split's failures
        (reported once).

    Raises:
        DataError: an empty index, too few patients for the splits, a patient the index puts in two splits.
    """
    if not len(index):
        raise DataError(f"{index.source}: no usable image ({len(index.missing)} named but missing or not images)")
    rows = index.rows or index.entries  # every row, so that a file missing today moves no patient to another split
    fixed = [e.split for e in rows]
    _check_patients_in_one_split(rows, index.source)
    shares, optional = _split_shares(index.source, fixed, fractions_of(val_fraction, test_fraction))
    targets = _split_targets(index, rows)
    patients = _index_patients(index, rows)
    _note_without_patient(index.source, patients)
    try:
        drawn = split_by_patient(targets, patients, shares, seed, fixed, optional, _EMPTY_HINT)
    except DataError as e:
        raise DataError(f"{index.source}: {e}") from None
    patient = dict(zip((e.line for e in rows), patients, strict=True))
    if index.rows:  # the usable entries' splits, found by their CSV line
        by_line = dict(zip((e.line for e in rows), drawn, strict=True))
        drawn = [by_line[e.line] for e in index.entries]
    splits = {}
    for name in shares:
        mine = [e for e, s in zip(index.entries, drawn, strict=True) if s == name]
        if not mine and name in optional:  # a test split the index never names, left empty by the draw: left out
            continue
        if not mine and name not in fixed:
            raise DataError(f"{index.source}: the {name} split has no usable image (of {sum(d == name for d in drawn)}"
                            f" image(s) drawn into it): {_EMPTY_HINT}")
        splits[name] = Split([e.file for e in mine], [tuple(e.targets) for e in mine],
                             patients=[patient[e.line] for e in mine] if index.rows else [e.patient for e in mine],
                             findings=tuple(index.findings))
    splits["train"].failures = [(p, f"{p}: {why}") for p, why in index.missing]
    return list(index.findings), splits


_EMPTY_HINT = ("give --test-fraction 0 (no test split), another --val-fraction or --test-fraction, or name the splits "
               "in the index's split column")


def _split_shares(source: str, fixed: list, fractions: dict[str, float]) -> tuple[dict[str, float], tuple]:
    """({split: share} to draw, the splits that may end empty and are then left out). An index whose split column
    fixes every row gives exactly its own splits (train and val required); otherwise the fractions' splits plus
    those the index names, a test split it never names being optional."""
    named = [s for s in ("train", "val", "test") if s in fixed]
    if all(fixed):
        absent = [s for s in ("train", "val") if s not in named]
        if absent:
            raise DataError(f"{source}: every row's split is given by its split column and none is "
                            f"{' or '.join(repr(s) for s in absent)}: name some rows {absent[0]}, or leave their "
                            "split blank to have them drawn")
        total = sum(fractions.get(s, 0.0) for s in named)  # the shares matter not: nothing is left to draw
        return {s: fractions.get(s, 0.0) / total for s in named}, ()
    names = list(fractions) + [s for s in ("val", "test") if s in named and s not in fractions]
    return {s: fractions.get(s, 0.0) for s in names}, tuple(s for s in names if s == "test" and s not in named)


def _split_targets(index: LabelIndex, rows) -> np.ndarray:
    """(rows, K) targets the split is drawn from: an uncertain label masked (as ``uncertain="ignore"`` reads it)
    whatever the run's policy, so that runs of one index under ignore, zeros and ones hold the same patients in each
    split and their validation figures compare. Each entry keeps which of its labels were -1 (``IndexEntry.uncertain``):
    the index is not read again."""
    y = np.array([e.targets for e in rows], dtype=np.float64).reshape(len(rows), len(index.findings))
    for i, e in enumerate(rows):
        if e.uncertain:
            y[i, list(e.uncertain)] = np.nan
    return y


def _index_patients(index: LabelIndex, rows) -> list[str | None]:
    """The patient of each row: the index's, else the DICOM PatientID of its file (when it is DICOM and has one)."""
    files = {e.line: e.file for e in index.entries} if index.rows else {}
    unknown = [files[e.line] for e in rows if e.patient is None and e.line in files]
    from_dicom = (_dicom_patients(unknown) or {}) if unknown else {}
    return [e.patient if e.patient is not None else from_dicom.get(files.get(e.line)) for e in rows]


def _note_without_patient(source: str, patients: list[str | None]) -> None:
    """Say on stderr, once, that images without a patient (no patient column or value, no ``patientNNNNN`` in a
    CheXpert path, no DICOM PatientID) are split by image: each is a patient of its own."""
    lacking = sum(p is None for p in patients)
    if lacking and lacking == len(patients):
        print(f"note: {source}: no image has a patient (no patient column, no patientNNNNN in the paths, no DICOM "
              "PatientID): each image is its own patient, so the split is by image; if patients have several "
              "images, validation figures may be inflated (add a patient column to the index)", file=sys.stderr)
    elif lacking:
        print(f"note: {source}: {lacking} of {len(patients)} image(s) have no patient: each of those is its own "
              "patient, split by image", file=sys.stderr)


def _check_patients_in_one_split(rows, source: str) -> None:
    """DataError naming both lines when the index's own split column puts a patient in two splits."""
    first: dict[str, object] = {}
    for e in rows:
        if e.patient is None or e.split is None:
            continue
        seen = first.setdefault(e.patient, e)
        if seen.split != e.split:
            raise DataError(f"{source}: patient {e.patient} is in the {seen.split} split (line {seen.line}) and "
                            f"the {e.split} split (line {e.line}): a patient must be in one split only")


def split_summary(splits: dict[str, Split]) -> dict:
    """Per split: images, patients (distinct ids, an image without one counting as one; null where the data has
    no patients) and, for multi-label splits, the positives and masked labels of each finding."""
    out = {}
    for name, split in splits.items():
        known = [p for p in split.patients if p is not None]
        record = {"images": len(split),
                  "patients": len(set(known)) + len(split.patients) - len(known) if split.patients else None}
        if split.multilabel:
            k = len(split.findings) or (len(split.labels[0]) if split.labels else 0)
            y = np.asarray(split.labels, np.float64).reshape(len(split), k)
            names = split.findings or tuple(str(i) for i in range(k))
            record["positives"] = dict(zip(names, (y == 1).sum(0).tolist(), strict=True))
            record["masked"] = dict(zip(names, np.isnan(y).sum(0).tolist(), strict=True))
        else:
            record["per_class"] = np.bincount(np.asarray(split.labels, np.int64)).tolist() if split.labels else []
        out[name] = record
    return out


def fingerprint(root: str | os.PathLike, classes: list[str], splits: dict[str, Split]) -> dict:
    """The identity of a data set as ``discover`` found it: classes, images per split and class, and a SHA-256
    of every file's split, class, path relative to ``root`` and size.

    Moving or copying the folder keeps it (nothing absolute, no modification time);
    adding, removing, renaming or resizing a file changes it. Files are not read.
    """
    if any(split.multilabel for split in splits.values()):
        return _multilabel_fingerprint(root, classes, splits)
    root = Path(root).absolute()
    digest = hashlib.sha256()
    images = {}
    for name in sorted(splits):
        split = splits[name]
        images[name] = dict(zip(classes, np.bincount(split.labels, minlength=len(classes)).tolist(), strict=True))
        for path, label in sorted(zip(split.paths, split.labels, strict=True)):
            rel = Path(path).absolute().relative_to(root).as_posix()
            digest.update(json.dumps([name, classes[label], rel, os.stat(path).st_size]).encode() + b"\n")
    return {"sha256": digest.hexdigest(), "classes": list(classes), "images": images}


def _multilabel_fingerprint(root, findings: list[str], splits: dict[str, Split]) -> dict:
    """``fingerprint`` of multi-label splits: positives per finding per split; each file's split, targets (masked
    as null), path relative to ``root`` and size (-1 when it is gone: a missing file changes it, never crashes)."""
    digest = hashlib.sha256()
    images = {}
    for name in sorted(splits):
        split = splits[name]
        y = np.asarray(split.labels, np.float64).reshape(len(split), len(findings))
        images[name] = dict(zip(findings, (y == 1).sum(0).tolist(), strict=True))
        for path, label in sorted(zip(split.paths, split.labels, strict=True), key=lambda r: r[0]):
            size = os.stat(path).st_size if os.path.exists(path) else -1
            targets = [None if v != v else v for v in label]  # nan is not JSON
            rel = Path(os.path.relpath(path, root)).as_posix()
            digest.update(json.dumps([name, targets, rel, size]).encode() + b"\n")
    return {"sha256": digest.hexdigest(), "classes": list(findings), "images": images}


def fingerprint_difference(run: dict, found: dict) -> str | None:
    """Why two fingerprints differ, in words; None when they are the same data."""
    if run["sha256"] == found["sha256"]:
        return None
    if run["classes"] != found["classes"]:
        return f"its classes are {found['classes']}, the run's are {run['classes']}"
    diffs = [f"{split}/{c}: {found['images'].get(split, {}).get(c, 0)} images, the run had {n}"
             for split, per_class in run["images"].items() for c, n in per_class.items()
             if found["images"].get(split, {}).get(c, 0) != n]
    diffs += [f"{split}: a split the run did not have" for split in found["images"] if split not in run["images"]]
    if diffs:
        return "; ".join(diffs)
    return "the same number of images, but file names or sizes differ"


def _split_files(files: dict[str, list[str]], val_fraction: float, seed: int, patients: dict[str, str] | None):
    """(train, val) files per class: by patient when the files are DICOM with a PatientID (``patients``: each file's,
    ``_dicom_patients``), else ``_stratified``."""
    if patients is None:
        return _stratified(files, val_fraction, seed)
    classes = list(files)
    paths = [p for c in classes for p in files[c]]
    labels = [i for i, c in enumerate(classes) for _ in files[c]]
    assigned = split_by_patient(labels, [patients.get(p) for p in paths], fractions_of(val_fraction), seed)
    out = ({c: [] for c in classes}, {c: [] for c in classes})
    for path, label, split in zip(paths, labels, assigned, strict=True):
        out[int(split == "val")][classes[label]].append(path)
    for c in classes:
        if not out[0][c] or not out[1][c]:
            raise DataError(f"class '{c}': its {len(files[c])} image(s) are of too few patients to split "
                            f"{val_fraction:.0%} off for validation without a patient in both splits")
    return tuple({c: sorted(v) for c, v in part.items()} for part in out)


def _dicom_patients(paths: list[str]) -> dict[str, str] | None:
    """{path: PatientID} of the DICOM files that have one; None when no file has one (nothing to group by)."""
    found = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                head = f.read(SNIFF_BYTES)
        except OSError:
            continue  # prepare reports it
        if sniff_format(head) == "dicom":
            patient = dicom_patient(path)
            if patient is not None:
                found[path] = patient
    return found or None


def _stratified(files: dict[str, list[str]], val_fraction: float, seed: int):
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = {}, {}
    for c, paths in files.items():
        order = rng.permutation(len(paths))
        n_val = int(round(len(paths) * val_fraction))
        if n_val == 0 or n_val == len(paths):
            raise DataError(f"class '{c}' has {len(paths)} image(s): too few to split {val_fraction:.0%} off for validation")
        val[c] = sorted(paths[i] for i in order[:n_val])
        train[c] = sorted(paths[i] for i in order[n_val:])
    return train, val


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "medge", "preprocess")


def _cache_file(path: str, cfg: PreprocessConfig, cache_dir: str) -> str:
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{cfg.fingerprint()}"
    return os.path.join(cache_dir, cfg.fingerprint(), hashlib.sha256(key.encode()).hexdigest()[:32] + ".npy")


def prepare_one(path: str, cfg: PreprocessConfig, cache_dir: str) -> tuple[str, tuple[dict, dict]]:
    """The cache file of one image (made if missing) and its (info, stats) for the data profile."""
    try:
        target = _cache_file(path, cfg, cache_dir)
    except OSError as e:
        raise MedgeError(f"{path}: cannot stat: {e.strerror}") from None
    sidecar = target[: -len(".npy")] + ".json"
    if os.path.exists(target) and os.path.exists(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as f:
                meta = json.load(f)
            return target, (meta["info"], meta["stats"])
        except (OSError, ValueError, KeyError):
            pass  # a cache written before the profile existed, or damaged: made again below
    image, info = load_image(path)
    stages = preprocess_stages(image, cfg, info.display_range)
    meta = {"info": info.to_dict(), "stats": image_stats(stages["gray"], stages["resized"])}
    _atomic_save(target, lambda f: np.save(f, stages["resized"]))
    _atomic_save(sidecar, lambda f: f.write(json.dumps(meta).encode()))
    return target, (meta["info"], meta["stats"])


def _atomic_save(target: str, write) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)  # atomic: a concurrent reader never sees half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def prepare(split: Split, cfg: PreprocessConfig, cache_dir: str, workers: int = 2, name: str = "",
            verbose: bool = True) -> Split:
    """Preprocess (or find in the cache) every file; unreadable files are reported and skipped.

    OpenCV releases the GIL, so threads run the decoding and CLAHE in parallel.

    Returns:
        a new Split holding only the usable files, their cache files and profiles, and the failures (the
        split's own, files that are not images, first).
    """
    def job(path):
        try:
            return prepare_one(path, cfg, cache_dir), None
        except MedgeError as e:
            return None, str(e)

    from medge.train.progress import progress

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(progress(pool.map(job, split.paths), total=len(split), desc=f"preprocessing {name}".strip(),
                                unit="img", enabled=verbose))
    out = Split([], [], failures=list(split.failures), findings=split.findings)
    patients = split.patients or [None] * len(split)
    for path, label, patient, (done, err) in zip(split.paths, split.labels, patients, results, strict=True):
        if err is None:
            out.paths.append(path)
            out.labels.append(label)
            if split.patients:
                out.patients.append(patient)
            out.cache_files.append(done[0])
            out.profiles.append(done[1])
        else:
            out.failures.append((path, err))
            if verbose:
                print(f"skipping unreadable image: {err}", file=sys.stderr)
    unreadable = len(out.failures) - len(split.failures)
    if verbose and unreadable:
        print(f"{name or 'split'}: skipped {unreadable} of {len(split)} image(s)", file=sys.stderr)
    if verbose and split.failures:
        index = split.multilabel or bool(split.patients)  # class folders know no patients (a Split of theirs has none)
        what = "named in the index but missing or not images" if index else "that are not images"
        print(f"{name or 'split'}: left out {len(split.failures)} file(s) {what}", file=sys.stderr)
    return out


def data_profile(split: Split, root: str | os.PathLike) -> dict | None:
    """What a (prepared) split of the data set ``root`` looks like: sizes, bit depths, modalities, statistics, and
    whether ``medge synth`` made it (``edge.inputs.profile``)."""
    return build_profile(split.profiles, synthetic=is_synthetic(root))


def check_usable(split: Split, classes: list[str], name: str) -> None:
    """Fail when a split has no usable image, or a class has none left after skipping; a multi-label split fails
    only when empty, or when it is the train split and a finding has no positive left (nothing to learn it from)."""
    if not len(split):
        raise DataError(f"the {name} split has no usable image")
    if split.multilabel:
        y = np.asarray(split.labels, np.float64).reshape(len(split), len(classes))
        none = [c for c, n in zip(classes, (y == 1).sum(0), strict=True) if n == 0]
        if none and name == "train":
            raise DataError(f"the {name} split has no usable positive image of finding(s) {none}: nothing to learn "
                            "them from; leave their columns out of the index (or their names out of its 'A|B' "
                            "column), or add images where they are present (a -1 counts as present only with "
                            "--uncertain ones)")
        return
    counts = np.bincount(split.labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"the {name} split has no usable image of class(es) {empty}")


def load_uint8(split: Split, indices) -> np.ndarray:
    """Stack cached (size, size) uint8 images for the given indices: (N, size, size)."""
    return np.stack([np.load(split.cache_files[i]) for i in indices])


def load_normalized(split: Split, indices, cfg: PreprocessConfig) -> np.ndarray:
    """(N, C, size, size) float32, exactly ``edge.preprocess`` of each file."""
    return np.stack([normalize(np.load(split.cache_files[i]), cfg) for i in indices])
