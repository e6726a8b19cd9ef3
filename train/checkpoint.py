"""Checkpoints: everything export and the edge need, written atomically, read defensively."""
from __future__ import annotations

import os
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
    def epoch(self) -> int:
        return int(self.payload["epoch"])

    @property
    def metrics(self) -> dict:
        return self.payload["metrics"]

    @property
    def versions(self) -> dict:
        return self.payload["versions"]


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and validate a medge checkpoint (tensors and plain data only: no pickled code).

    Args:
        path: a ``.pt`` file, or a run folder (its ``best.pt``).

    Raises:
        CheckpointError: missing, unreadable, corrupt, foreign or incomplete file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files (zip, pickle, EOF, ...)
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
