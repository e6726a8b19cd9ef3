"""Checkpoints: everything export and the edge need, written atomically, read defensively.

Loaded with ``torch.load(weights_only=True)`` only: a checkpoint holds tensors and
plain data, never pickled code. A file that is not one (an image, an ONNX model,
a whole pickled model) is named as "not a medge checkpoint" with what it looks
like, never with PyTorch's advice to turn that protection off.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from medge.edge.errors import CheckpointError, ConfigError
from medge.edge.preprocess import PreprocessConfig
from medge.train.config import TrainConfig

FORMAT = "medge-checkpoint"
VERSION = 1
REQUIRED = ("model", "train_config", "preprocess", "classes", "arch", "epoch", "metrics", "versions")


def library_versions() -> dict:
    """Versions of the libraries that decide what a checkpoint or bundle contains."""
    import cv2
    import numpy
    import torchvision

    from medge import __version__

    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {"medge": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": numpy.__version__, "opencv": cv2.__version__}


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, validated checkpoint: typed configs beside the raw payload ``torch.load`` returned.

    ``ck["model"]``, ``ck["optimizer"]``, ... read the payload; nothing is added to it or
    removed from it, so saving ``ck.payload`` again writes what was read.
    """

    path: Path
    payload: dict
    preprocess: PreprocessConfig
    train_config: TrainConfig

    def __getitem__(self, key: str):
        return self.payload[key]

    def __contains__(self, key: str) -> bool:
        return key in self.payload

    @property
    def arch(self) -> str:
        return self.payload["arch"]

    @property
    def classes(self) -> list[str]:
        return list(self.payload["classes"])

    @property
    def task(self) -> str:
        """"multilabel" (one sigmoid per finding; ``classes`` are the findings) or "single" (softmax over classes;
        every checkpoint written before multi-label training existed)."""
        return self.payload.get("task", "single")

    @property
    def data_source(self) -> dict | None:
        """Where an index run's data came from, to rebuild its splits: {"index", "images", "format", "uncertain",
        "seed", "val_fraction", "test_fraction", "index_sha256" (``file_sha256`` of the index), "split_sha256"
        ({split: ``membership_sha256``}; both absent in checkpoints written before they were recorded)}; None for a
        run on class folders."""
        return self.payload.get("data_source")

    @property
    def epoch(self) -> int:
        return int(self.payload["epoch"])

    @property
    def metrics(self) -> dict:
        return self.payload["metrics"]

    @property
    def versions(self) -> dict:
        return self.payload["versions"]

    @property
    def weights_sha256(self) -> str:
        """The identity of the model weights (``weights_sha256``), the same in every file that holds them."""
        return weights_sha256(self.payload["model"])


def weights_sha256(state_dict: dict) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes, in name order.

    The identity of the weights, not of a file: best.pt is rewritten when the
    test split is scored, with the same weights and so the same hash. A bundle
    records it, so that parity and bench can tell whether a checkpoint is the one
    the bundle was exported from.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(t.dtype).replace("torch.", ""), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_LOOKS_LIKE = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"II*\x00", "a TIFF image"),
               (b"MM\x00*", "a TIFF image"), (b"BM", "a BMP image"), (b"{", "a JSON or text file"))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (an index run's index, recorded in ``data_source["index_sha256"]``)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def membership_sha256(files, root: str | os.PathLike) -> str:
    """SHA-256 of a split's membership: its images' paths relative to the images folder ``root`` (as the index
    names them), sorted, one a line. Moving the images folder keeps it; an image moved to another split changes it."""
    base = os.path.abspath(root)
    names = sorted(os.path.relpath(os.path.abspath(f), base).replace(os.sep, "/") for f in files)
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def _not_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a PyTorch file, from its first bytes (None: it may be one)."""
    with open(path, "rb") as f:
        head = f.read(132)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):  # torch.save's zip, or its legacy pickle
        return None
    if path.suffix.lower() == ".onnx":
        return "an ONNX model (what export writes, not what it reads)"
    if head[128:132] == b"DICM":
        return "a DICOM file"
    for magic, what in _LOOKS_LIKE:
        if head.startswith(magic):
            return what
    return f"not a PyTorch file (first bytes: {head[:8].hex(' ')})"


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and validate a medge checkpoint (tensors and plain data only: no pickled code).

    Args:
        path: a ``.pt`` file, or a run folder (its ``best.pt``).

    Raises:
        CheckpointError: missing, unreadable, corrupt, foreign or incomplete file.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "model.json").is_file() and not (path / "best.pt").exists():
            raise CheckpointError(f"{path}: is a bundle folder: give the training checkpoint (best.pt) it was exported from")
        path = path / "best.pt"
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path}: not a regular file: give a checkpoint file (best.pt, last.pt) or a run folder")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    what = _not_torch_file(path)
    if what is not None:
        raise CheckpointError(f"{path}: not a medge checkpoint: {what}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files (zip, pickle, EOF, ...)
        if "weights only load failed" in str(e).lower() or isinstance(e, pickle.UnpicklingError):
            raise CheckpointError(f"{path}: not a medge checkpoint: it holds pickled Python objects (a whole model "
                                  "saved with torch.save(model)?), which medge never loads: unpickling them can run "
                                  "code") from None
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): {reason}") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a medge checkpoint (a plain state dict, or another tool's file?)")
    if ck.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {ck.get('version')!r}; this medge reads {VERSION}")
    missing = [k for k in REQUIRED if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {missing}")
    try:
        pcfg = PreprocessConfig.from_dict(ck["preprocess"])
        tcfg = TrainConfig.from_dict(ck["train_config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: bad configuration: {e}") from None
    return Checkpoint(path, ck, pcfg, tcfg)


def model_from_checkpoint(ck: Checkpoint):
    """Rebuild the trained nn.Module (eval mode, CPU) from a loaded checkpoint."""
    from medge.train.models import build_model

    model = build_model(ck.arch, ck.preprocess.channels, len(ck.classes))
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit {ck.arch}: {str(e).splitlines()[0]}") from None
    return model.eval()


def save_model_checkpoint(path, model, arch: str, classes: list[str], pcfg: PreprocessConfig, metrics: dict | None = None,
                          epoch: int = 0) -> Path:
    """Write a checkpoint for a model trained elsewhere (or not at all: benchmarks and tests)."""
    save_checkpoint(path, {"model": model.state_dict(), "arch": arch, "classes": list(classes),
                           "train_config": TrainConfig(arch=arch).to_dict(), "preprocess": pcfg.to_dict(),
                           "epoch": epoch, "metrics": metrics or {}, "versions": library_versions(),
                           "history": [], "best": None})
    return Path(path)
