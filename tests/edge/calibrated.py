"""Calibrated copies of the test bundles for the edge tests, made without torch.

The test bundles are exported without --data (no operating point, no data profile).
``calibrated_copy`` gives a copy the sections ``medge export --data`` writes: the
operating point chosen by ``medge.export.calibrate`` on the bundle's own logits for a
synthetic validation split, and the profile of those images (``edge.inputs.profile``).
"""
import json
import shutil
from pathlib import Path

import numpy as np

from medge.edge.inputs.image import load_image
from medge.edge.inputs.profile import build_profile, image_stats
from medge.edge.model import Model
from medge.edge.preprocess import preprocess_stages
from medge.export.calibrate import operating_point_section
from medge.train.synth import SynthConfig, generate


def synth_split(root: Path, n: int = 120, size: int = 64, bits: str = "8", lesion_contrast: float = 0.15, seed: int = 0,
                val_fraction: float = 0.5) -> tuple[Path, Path]:
    """A synthetic data set; returns its (val, test) folders of class folders."""
    generate(root, SynthConfig(n=n, size=size, bits=bits, val_fraction=val_fraction, test_fraction=0.25,
                               lesion_contrast=lesion_contrast, seed=seed))
    return root / "val", root / "test"


def labelled(folder: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    paths, labels = [], []
    for k, c in enumerate(classes):
        for p in sorted((folder / c).glob("*.png")):
            paths.append(str(p))
            labels.append(k)
    return paths, np.asarray(labels)


def calibrated_copy(src: Path, dst: Path, val: Path, criterion: str = "sensitivity=0.95", positive: str = "disease",
                    profile: bool = True, unsupported: bool = True) -> Path:
    """Copy bundle ``src`` to ``dst`` with an operating point fitted on ``val`` (and the data profile of its images).

    The splits here are small (30 positives, where 0.95 at 95% needs 59): by default the point-estimate threshold,
    marked unsupported (``unsupported=False``: the guarantee, or the too-few-cases error)."""
    shutil.copytree(src, dst)
    model = Model.load(dst)
    paths, labels = labelled(val, model.classes)
    logits = np.array([p.logits for p in model.predict(paths, workers=0)], np.float64)
    manifest = json.loads((dst / "model.json").read_text())
    manifest["operating_point"] = operating_point_section(logits, labels, model.classes, criterion, positive,
                                                          f"val split of {val.parent}", unsupported=unsupported)
    if profile:
        items = []
        for p in paths:
            image, info = load_image(p)
            st = preprocess_stages(image, model.preprocess_config, info.display_range)
            items.append((info.to_dict(), image_stats(st["gray"], st["resized"])))
        manifest["data_profile"] = build_profile(items)
    (dst / "model.json").write_text(json.dumps(manifest, indent=2))
    return dst
